"""Frame -> encoder input, with OpenCV, as the model directory's manifest says.

The reference scripts resize with scikit-image (MedSAM), OpenCV (LiteMedSAM) or PIL
(SAM). OpenCV stands in for all three here; for LiteMedSAM it is the same call, for the
others the mask difference is measured against the reference (tests and bench/).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from medsam_edge.contract import Preprocess
from medsam_edge.runtime.geometry import resized_hw


@dataclass
class Prepared:
    tensor: np.ndarray  # (1, 3, S, S) float32
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]


def interpolation(pre: Preprocess, shrinking: bool) -> int:
    """The OpenCV resize flag for the manifest's interpolation (calibration resizes alike)."""
    if pre.interpolation == "area" or shrinking:
        # INTER_AREA averages over the source pixels: OpenCV's anti-aliased downscale.
        return cv2.INTER_AREA
    return cv2.INTER_CUBIC if pre.interpolation == "cubic_antialias" else cv2.INTER_LINEAR


def preprocess(image: np.ndarray, pre: Preprocess) -> Prepared:
    """image: HxWx3 uint8 RGB -> (1, 3, S, S) float32, normalised and padded."""
    h, w = image.shape[:2]
    rh, rw = resized_hw(h, w, pre)
    interp = interpolation(pre, shrinking=rh * rw < h * w)
    resized = image if (rh, rw) == (h, w) else cv2.resize(image, (rw, rh), interpolation=interp)
    x = resized.astype(np.float32)
    if pre.normalize == "minmax":
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / max(hi - lo, 1e-8)
    else:
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    s = pre.size
    out = np.zeros((1, 3, s, s), np.float32)
    out[0, :, :rh, :rw] = x.transpose(2, 0, 1)
    return Prepared(out, (h, w), (rh, rw))
