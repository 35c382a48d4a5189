"""A CPU backend that reuses a fixed ring of embedding slots, as the TensorRT backend does.

The onnxruntime CPU backend with `slots` buffers: encode() overwrites the oldest slot
in place, so a handle from `slots` encodes ago really points at another frame's
embedding; decode() refuses it with ExpiredEmbedding, exactly the contract of
engines/base.py. Tests of the reuse cache and real-time mode use it to prove they never
decode an expired embedding (and would see wrong masks if they did).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from medsam_edge.engines.base import ExpiredEmbedding
from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend


@dataclass(frozen=True)
class SlotHandle:
    generation: int
    slot: int


class SlotBackend(OnnxruntimeBackend):
    """OnnxruntimeBackend(encoder, decoder, ...) whose embeddings live in `slots` buffers."""

    def __init__(self, encoder_onnx, decoder_onnx, slots: int = 3, **kwargs) -> None:
        super().__init__(encoder_onnx, decoder_onnx, **kwargs)
        if slots < 2:
            raise ValueError("at least 2 slots (one is always the next encode's)")
        self.embedding_slots = slots
        self._buffers: list[np.ndarray | None] = [None] * slots
        self._owner = [-1] * slots
        self._generation = 0
        self._lock = threading.Lock()
        self.expired_refusals = 0

    def encode(self, image: np.ndarray) -> SlotHandle:
        with self._lock:
            generation = self._generation
            self._generation += 1
            slot = generation % self.embedding_slots
            self._owner[slot] = -1  # being written: no decode may read it from here on
        embedding = super().encode(image)
        with self._lock:
            buf = self._buffers[slot]
            if buf is None:
                self._buffers[slot] = np.array(embedding)
            else:
                buf[...] = embedding  # in place: an expired handle would read this frame's values
            self._owner[slot] = generation
        return SlotHandle(generation, slot)

    def embedding_valid(self, embedding) -> bool:
        return isinstance(embedding, SlotHandle) and self._owner[embedding.slot] == embedding.generation

    def _read(self, embedding) -> np.ndarray:
        with self._lock:
            if not self.embedding_valid(embedding):
                self.expired_refusals += 1
                raise ExpiredEmbedding(f"embedding {embedding.generation} was overwritten ({self.embedding_slots} slots)")
            buf = self._buffers[embedding.slot]
            assert buf is not None
            return buf.copy()  # the decoder's own copy, as the TensorRT backend takes one

    def decode(self, embedding, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return super().decode(self._read(embedding), coords, labels)

    def embedding_to_numpy(self, embedding) -> np.ndarray:
        # The parent's decode() passes the array read out of the slot through here too.
        return embedding if isinstance(embedding, np.ndarray) else self._read(embedding)
