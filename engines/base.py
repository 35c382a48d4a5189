"""The one small interface every execution backend implements.

encoder: preprocessed image (1, 3, S, S) float32 -> embedding (opaque to the caller);
decoder: embedding + boxes (N, 4) float32 in the model's input frame ->
         low-res logits (N, 1, 256, 256) float32 and iou (N, 1) float32.

The embedding is whatever the backend keeps it as (a numpy array for onnxruntime on the
CPU, a device buffer for TensorRT), so it need not cross to the host between encoder and
decoder. `embedding_to_numpy` brings it to the host when a caller really needs it
(fidelity checks, benchmarks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Backend(ABC):
    #: short name as the user types it: "onnxruntime-cpu", "tensorrt", "torch", ...
    name: str = "?"
    #: "cpu" or "cuda"
    device: str = "cpu"
    #: "fp32", "fp16", "int8"
    precision: str = "fp32"

    @abstractmethod
    def encode(self, image: np.ndarray) -> Any:
        """image: (1, 3, S, S) float32, preprocessed as the manifest says."""

    @abstractmethod
    def decode(self, embedding: Any, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """boxes: (N, 4) float32 x0, y0, x1, y1 in the model's input pixel frame."""

    def embedding_to_numpy(self, embedding: Any) -> np.ndarray:
        return np.asarray(embedding)

    def describe(self) -> dict:
        """What actually ran, for logs and per-frame records."""
        return {"backend": self.name, "device": self.device, "precision": self.precision}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
