"""The core both the Predictor and the Stream use: encode a frame once, decode many boxes.

It owns the model's geometry (preprocess, box mapping, mask postprocess) so nothing
else needs to know which model it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsam_edge.contract import Preprocess
from medsam_edge.engines.base import Backend
from medsam_edge.runtime.geometry import boxes_to_model
from medsam_edge.runtime.postprocess import masks_from_logits
from medsam_edge.runtime.preprocess import preprocess


@dataclass
class Encoded:
    """An embedding with the geometry of the frame it came from."""

    embedding: Any
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    frame_index: int = -1


class Segmenter:
    def __init__(self, backend: Backend, pre: Preprocess) -> None:
        self.backend = backend
        self.pre = pre

    def encode(self, image: np.ndarray, frame_index: int = -1, timings: dict | None = None) -> Encoded:
        t0 = time.perf_counter()
        prepared = preprocess(image, self.pre)
        t1 = time.perf_counter()
        embedding = self.backend.encode(prepared.tensor)
        t2 = time.perf_counter()
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0) * 1e3
            timings["encode"] = (t2 - t1) * 1e3
        return Encoded(embedding, prepared.original_hw, prepared.resized_hw, frame_index)

    def decode(
        self, enc: Encoded, boxes: np.ndarray, timings: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """boxes (N,4) in original pixels -> masks (N,H,W) bool, scores (N,), logits (N,1,256,256)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            h, w = enc.original_hw
            return np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros((0, 1, 256, 256), np.float32)
        t0 = time.perf_counter()
        # One decoder call for all boxes of the frame.
        logits, iou = self.backend.decode(enc.embedding, boxes_to_model(boxes, enc.original_hw, enc.resized_hw))
        t1 = time.perf_counter()
        masks = masks_from_logits(logits, enc.original_hw, enc.resized_hw, self.pre)
        t2 = time.perf_counter()
        if timings is not None:
            timings["decode"] = (t1 - t0) * 1e3
            timings["postprocess"] = (t2 - t1) * 1e3
        return masks, np.asarray(iou, np.float32).reshape(-1), logits
