"""Low-res logits -> full-size masks, following each reference script (see contract.Preprocess)."""

from __future__ import annotations

import cv2
import numpy as np

from medsam_edge.contract import Preprocess


def _resize(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    # cv2's INTER_LINEAR uses half-pixel centres like torch's bilinear with align_corners=False.
    if x.shape == hw:
        return x
    return cv2.resize(x, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def masks_from_logits(
    logits: np.ndarray, original_hw: tuple[int, int], resized: tuple[int, int], pre: Preprocess
) -> np.ndarray:
    """(N, 1, 256, 256) float logits -> (N, H, W) bool masks."""
    out = np.empty((logits.shape[0], *original_hw), dtype=bool)
    for i, lg in enumerate(np.asarray(logits, np.float32)[:, 0]):
        if pre.mask_from == "full" and pre.sigmoid_first:
            out[i] = _resize(_sigmoid(lg), original_hw) > 0.5
            continue
        if pre.mask_from == "crop":
            lg = lg[: resized[0], : resized[1]]
        elif pre.mask_from == "upsample_crop":
            lg = _resize(lg, (pre.size, pre.size))[: resized[0], : resized[1]]
        # sigmoid(x) > 0.5 exactly when x > 0.
        out[i] = _resize(np.ascontiguousarray(lg), original_hw) > 0.0
    return out
