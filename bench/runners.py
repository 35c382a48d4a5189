"""One frame through one row, stage by stage: preprocess, encode, decode, postprocess.

The reference runner is MedSAM's published inference path (export/reference.py:
scikit-image/OpenCV/PIL preprocessing as the model's script does, FP32 eager modules,
its postprocess). Every other row is the runtime's path (OpenCV preprocessing, an
engines backend, the runtime's postprocess), which is what a user deploys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsam_edge.contract import box_tokens
from medsam_edge.runtime.geometry import boxes_to_model


@dataclass
class FrameOutput:
    stages_ms: dict[str, float]
    masks: np.ndarray  # (N, H, W) bool
    embedding: Any  # the backend's own embedding; to_numpy() brings it to the host


class Runner:
    name = "?"
    device = "cpu"

    def preprocess(self, image: np.ndarray) -> Any: ...
    def encode(self, prepared: Any) -> Any: ...
    def decode(self, embedding: Any, prepared: Any, boxes: np.ndarray) -> np.ndarray: ...
    def postprocess(self, logits: np.ndarray, prepared: Any) -> np.ndarray: ...
    def to_numpy(self, embedding: Any) -> np.ndarray: ...

    def close(self) -> None:
        pass

    def sync(self) -> None:
        """Wait for queued GPU work so a stage's clock stops when its work is done."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def run(self, image: np.ndarray, boxes: np.ndarray) -> FrameOutput:
        t: dict[str, float] = {}
        c0 = time.perf_counter()
        prepared = self.preprocess(image)
        c1 = time.perf_counter()
        embedding = self.encode(prepared)
        self.sync()
        c2 = time.perf_counter()
        logits = self.decode(embedding, prepared, boxes)
        self.sync()
        c3 = time.perf_counter()
        masks = self.postprocess(logits, prepared)
        c4 = time.perf_counter()
        t.update(preprocess=(c1 - c0) * 1e3, encode=(c2 - c1) * 1e3, decode=(c3 - c2) * 1e3, postprocess=(c4 - c3) * 1e3)
        return FrameOutput(t, masks, embedding)


class ReferenceRunner(Runner):
    """PyTorch FP32 eager on the CPU, exactly the reference predictor's steps."""

    name = "reference"

    def __init__(self, md, checkpoint=None) -> None:
        import torch

        from medsam_edge.engines.torch_backend import load_sam
        from medsam_edge.export.reference import ReferencePredictor

        self._torch = torch
        self.pre = md.preprocess
        self.predictor = ReferencePredictor(load_sam(md, checkpoint), self.pre)
        self.describe = {"backend": "torch", "device": "cpu", "precision": "fp32", "path": "MedSAM reference",
                         "torch_threads": torch.get_num_threads()}

    def preprocess(self, image):
        from medsam_edge.export.reference import prepare

        return prepare(image, self.pre)

    def encode(self, prepared):
        with self._torch.no_grad():
            return self.predictor.sam.image_encoder(prepared.tensor)

    def decode(self, embedding, prepared, boxes):
        logits, _ = self.predictor.decode(embedding, boxes_to_model(boxes, prepared.original_hw, prepared.resized_hw))
        return logits

    def postprocess(self, logits, prepared):
        from medsam_edge.export.reference import logits_to_masks

        return logits_to_masks(logits, prepared, self.pre)

    def to_numpy(self, embedding):
        return embedding.float().cpu().numpy()


class BackendRunner(Runner):
    """The runtime's path around any engines backend (onnxruntime, TensorRT, torch fast path)."""

    def __init__(self, name: str, backend, pre) -> None:
        self.name = name
        self.backend = backend
        self.device = backend.device
        self.pre = pre
        self.describe = backend.describe()

    def preprocess(self, image):
        from medsam_edge.runtime.preprocess import preprocess

        return preprocess(image, self.pre)

    def encode(self, prepared):
        return self.backend.encode(prepared.tensor)

    def decode(self, embedding, prepared, boxes):
        coords, labels = box_tokens(boxes_to_model(boxes, prepared.original_hw, prepared.resized_hw))
        logits, _ = self.backend.decode(embedding, coords, labels)
        return np.asarray(logits)

    def postprocess(self, logits, prepared):
        from medsam_edge.runtime.postprocess import masks_from_logits

        return masks_from_logits(logits, prepared.original_hw, prepared.resized_hw, self.pre)

    def to_numpy(self, embedding):
        return np.asarray(self.backend.embedding_to_numpy(embedding), np.float32)

    def close(self) -> None:
        self.backend.close()
