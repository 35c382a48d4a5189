"""The one small interface every execution backend implements.

encoder: preprocessed image (1, 3, S, S) float32 -> embedding (opaque to the caller);
decoder: embedding + prompt tokens -> low-res logits (N, 1, 256, 256) float32 and
         iou (N, 1) float32, where the tokens are the contract's point_coords (N, P, 2)
         float32 in the model's input frame and point_labels (N, P) float32
         (medsam_edge.contract.prompt_tokens builds them).

The embedding is whatever the backend keeps it as (a numpy array on the CPU, a device
buffer for TensorRT, a handle on a server's cache for Triton), so it need not cross to
the host between encoder and decoder. `embedding_to_numpy` brings it to the host when a
caller really needs it (fidelity checks, benchmarks).

Embedding lifetime: a backend that reuses a fixed set of device slots says how many
embeddings stay valid at once (`embedding_slots`; None: as many as the caller keeps).
`embedding_valid` tells whether one still is, and `decode` of an expired one raises
ExpiredEmbedding rather than reading memory that a later encode overwrote. The reuse
cache and real-time mode keep at most `embedding_slots - 1` embeddings (one slot is
always the next encode's) and re-encode instead of using an expired one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class ExpiredEmbedding(RuntimeError):
    """decode() got an embedding whose storage a later encode() has taken over."""


class Backend(ABC):
    #: short name as the user types it: "onnxruntime-cpu", "openvino-cpu", "tensorrt", "torch", ...
    name: str = "?"
    #: "cpu" or "cuda" (or "remote" for a server)
    device: str = "cpu"
    #: a key of medsam_edge.contract.PRECISIONS
    precision: str = "fp32"
    #: embeddings from encode() that stay valid at once; None: unlimited (host arrays)
    embedding_slots: int | None = None
    #: the files it was opened on, per part ("encoder", "decoder"); empty for a server
    paths: dict = {}
    #: why this precision runs, where it was chosen by `--precision auto` (engines/auto_precision.py)
    precision_choice: str | None = None

    @abstractmethod
    def encode(self, image: np.ndarray) -> Any:
        """image: (1, 3, S, S) float32, preprocessed as the manifest says."""

    @abstractmethod
    def decode(self, embedding: Any, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """coords (N, P, 2) float32, labels (N, P) float32 -> logits (N, 1, 256, 256), iou (N, 1)."""

    def embedding_valid(self, embedding: Any) -> bool:
        """False once the embedding's storage was reused by a later encode()."""
        return True

    def embedding_to_numpy(self, embedding: Any) -> np.ndarray:
        return np.asarray(embedding)

    def sync(self) -> None:
        """Wait for work queued on a device, so a timer stops when the work is done."""

    def describe(self) -> dict:
        """What actually ran, for logs and per-frame records."""
        out = {"backend": self.name, "device": self.device, "precision": self.precision}
        return {**out, "precision_choice": self.precision_choice} if self.precision_choice else out

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def max_kept_embeddings(backend: Backend, wanted: int) -> int:
    """How many embeddings a caller may keep without one expiring under it: one slot is
    always left for the next encode()."""
    slots = backend.embedding_slots
    return wanted if slots is None else max(0, min(wanted, slots - 1))
