"""The core every stream and the Predictor use: encode a frame once, decode many prompts.

It owns the model's geometry (preprocess, prompt mapping, mask postprocess) so nothing
else needs to know which model it is. Prompts of one layout (same number of clicks,
with or without a box) share a decoder call, at most DECODER_BATCH_MAX at a time
(CPU_DECODER_BATCH on a CPU): no prompt is ever padded, so a box-only prompt is exactly
what the MedSAM reference decodes, and a frame with many objects costs bounded memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsam_edge.contract import LOW_RES_HW, DECODER_BATCH_MAX, Preprocess, prompt_tokens
from medsam_edge.engines.base import Backend
from medsam_edge.runtime.geometry import boxes_to_model, points_to_model
from medsam_edge.runtime.postprocess import masks_from_logits
from medsam_edge.runtime.preprocess import Prepared, preprocess
from medsam_edge.runtime.prompts import Prompt, as_prompts

# Prompts per decoder call on a CPU: each prompt holds its own copy of the decoder's
# intermediates and a CPU gains nothing from a bigger batch (docs/decisions.md#cpu-decoder-batch).
CPU_DECODER_BATCH = 4


@dataclass
class Encoded:
    """An embedding with the geometry of the frame it came from.

    embedding: the backend's own handle (a host array, a device slot, a server key).
    original_hw / resized_hw: the frame's size and its size inside the model's input.
    frame_index: the frame the embedding was computed from (-1: not from a stream).
    timestamp: that frame's source time (s), where a session knows it.
    """

    embedding: Any
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    frame_index: int = -1
    timestamp: float | None = None


class OpenCVProcessing:
    """The runtime's pixels in and out: OpenCV preprocessing (runtime.preprocess) and the
    mask postprocess of each model's script (runtime.postprocess). The PyTorch reference
    swaps in the scripts' own libraries (export.reference.ReferenceProcessing)."""

    name = "opencv"

    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre

    def prepare(self, image: np.ndarray) -> Prepared:
        return preprocess(image, self.pre)

    def masks(self, logits: np.ndarray, original_hw: tuple[int, int], resized_hw: tuple[int, int]) -> np.ndarray:
        return masks_from_logits(logits, original_hw, resized_hw, self.pre)


class Segmenter:
    def __init__(self, backend: Backend, pre: Preprocess, processing=None) -> None:
        """processing: how pictures become tensors and logits masks (default OpenCVProcessing)."""
        self.backend = backend
        self.pre = pre
        self.processing = processing or OpenCVProcessing(pre)

    def encode(self, image: np.ndarray, frame_index: int = -1, timings: dict | None = None) -> Encoded:
        """image: HxWx3 uint8 RGB -> its embedding; timings gains "preprocess" and "encode" (ms)."""
        t0 = time.perf_counter()
        prepared = self.processing.prepare(image)
        t1 = time.perf_counter()
        embedding = self.backend.encode(prepared.tensor)
        self.backend.sync()
        t2 = time.perf_counter()
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0) * 1e3
            timings["encode"] = (t2 - t1) * 1e3
        return Encoded(embedding, prepared.original_hw, prepared.resized_hw, frame_index)

    def decode_logits(self, enc: Encoded, prompts: list[Prompt]) -> tuple[np.ndarray, np.ndarray]:
        """Prompts in frame pixels -> logits (N, 1, 256, 256) float32 and scores (N,) float32."""
        n = len(prompts)
        logits = np.empty((n, 1, LOW_RES_HW, LOW_RES_HW), np.float32)
        scores = np.empty(n, np.float32)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.layout, []).append(i)
        for members in groups.values():
            tokens = [self._tokens(enc, prompts[i]) for i in members]
            coords = np.stack([c for c, _ in tokens])
            labels = np.stack([lab for _, lab in tokens])
            chunk = CPU_DECODER_BATCH if self.backend.device == "cpu" else DECODER_BATCH_MAX
            for start in range(0, len(members), chunk):
                part = members[start:start + chunk]
                lg, iou = self.backend.decode(enc.embedding, coords[start:start + chunk],
                                              labels[start:start + chunk])
                logits[part] = lg
                scores[part] = np.asarray(iou, np.float32).reshape(-1)
        return logits, scores

    def _tokens(self, enc: Encoded, p: Prompt) -> tuple[np.ndarray, np.ndarray]:
        box = None if p.box is None else boxes_to_model(p.box, enc.original_hw, enc.resized_hw)
        return prompt_tokens(box, points_to_model(p.points, enc.original_hw, enc.resized_hw), p.labels)

    def decode(self, enc: Encoded, prompts, timings: dict | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prompts (or (N, 4) boxes) in original pixels -> masks (N, H, W) bool, scores (N,),
        logits (N, 1, 256, 256); timings gains "decode" and "postprocess" (ms)."""
        prompts = as_prompts(prompts)
        if not prompts:
            h, w = enc.original_hw
            return (np.zeros((0, h, w), bool), np.zeros(0, np.float32),
                    np.zeros((0, 1, LOW_RES_HW, LOW_RES_HW), np.float32))
        t0 = time.perf_counter()
        logits, scores = self.decode_logits(enc, prompts)
        self.backend.sync()
        t1 = time.perf_counter()
        masks = self.processing.masks(logits, enc.original_hw, enc.resized_hw)
        t2 = time.perf_counter()
        if timings is not None:
            timings["decode"] = (t1 - t0) * 1e3
            timings["postprocess"] = (t2 - t1) * 1e3
        return masks, scores, logits
