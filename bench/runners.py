"""One frame through one row: the runtime's own Segmenter over the row's backend.

Every row, the reference included, is a runtime.segmenter.Segmenter, so the benchmark
times the code a user deploys, stage by stage from the Segmenter's own timings (each
stage's clock stops after the backend's sync(), so GPU work is counted where it ran).
The reference row is the PyTorch backend (segment-anything's modules, FP32 eager) with
the reference scripts' preprocessing and postprocessing (export.reference.ReferenceProcessing):
MedSAM's published inference path. The other rows use the runtime's OpenCV processing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medsam_edge.runtime.segmenter import Segmenter

# The Segmenter's own stages, each timed by it (a row's end to end adds the frame's read).
SEGMENTER_STAGES = ("preprocess", "encode", "decode", "postprocess")


@dataclass
class FrameOutput:
    stages_ms: dict[str, float]
    masks: np.ndarray  # (N, H, W) bool
    embedding: Any  # the backend's own embedding; to_numpy() brings it to the host
    logits: np.ndarray  # (N, 1, 256, 256) float32, before the postprocess
    scores: np.ndarray  # (N,) float32, the decoder's IoU predictions


class Runner:
    """A row: its name, its Segmenter, and what its backend says ran."""

    def __init__(self, name: str, segmenter: Segmenter, extra: dict | None = None) -> None:
        self.name = name
        self.segmenter = segmenter
        self.device = segmenter.backend.device
        self.describe = {**segmenter.backend.describe(), "processing": segmenter.processing.name, **(extra or {})}

    def run(self, image: np.ndarray, boxes: np.ndarray) -> FrameOutput:
        t: dict[str, float] = {}
        enc = self.segmenter.encode(image, timings=t)
        masks, scores, logits = self.segmenter.decode(enc, boxes, t)
        return FrameOutput({k: t[k] for k in SEGMENTER_STAGES}, masks, enc.embedding, logits, scores)

    def to_numpy(self, embedding: Any) -> np.ndarray:
        return np.asarray(self.segmenter.backend.embedding_to_numpy(embedding), np.float32)

    def close(self) -> None:
        self.segmenter.backend.close()


def reference_runner(md, checkpoint=None, threads: int | None = None) -> Runner:
    """PyTorch FP32 eager on the CPU with the reference scripts' pixels in and out (on
    `threads` intra-op threads when given, so its ratios compare like with like)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from medsam_edge.export.torch_backend import TorchBackend
    from medsam_edge.export.reference import ReferenceProcessing

    backend = TorchBackend(md, checkpoint)
    return Runner("reference", Segmenter(backend, md.preprocess, ReferenceProcessing(md.preprocess)),
                  {"path": "MedSAM reference", "torch_threads": torch.get_num_threads()})


def backend_runner(name: str, backend, md) -> Runner:
    """The runtime's path around any engines backend (onnxruntime, OpenVINO, TensorRT, torch fast path)."""
    return Runner(name, Segmenter(backend, md.preprocess))
