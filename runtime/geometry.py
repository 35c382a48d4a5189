"""Where a frame's pixels land in the model's input square, and boxes with them.

Shared by the runtime and the PyTorch reference so both map boxes identically.
"""

from __future__ import annotations

import numpy as np

from medsam_edge.contract import Preprocess


def longest_side_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """Size after scaling the longest side to `size`, rounded as SAM and LiteMedSAM do."""
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resized_hw(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """The picture's size inside the S x S input, before padding."""
    if pre.resize == "stretch":
        return pre.size, pre.size
    return longest_side_hw(h, w, pre.size)


def boxes_to_model(boxes: np.ndarray, original_hw: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 in original pixels -> the model's input frame, float32."""
    h, w = original_hw
    rh, rw = resized
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b * np.array([rw / w, rh / h, rw / w, rh / h])).astype(np.float32)


def points_to_model(points: np.ndarray, original_hw: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """(K, 2) x, y in original pixels -> the model's input frame, float32 (as boxes_to_model)."""
    h, w = original_hw
    rh, rw = resized
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (p * np.array([rw / w, rh / h])).astype(np.float32)


def centre_box(h: int, w: int) -> np.ndarray:
    """(4,) float32: the centre half of an h x w picture, the default prompt where none is given."""
    return np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75], np.float32)
