"""Embedding reuse: spend the encoder only when the picture changed.

- exact repeat (frozen image, looping cine): a digest of the frame's bytes finds an
  embedding already computed;
- near repeat (probe held still): the mean absolute difference of small grey thumbnails
  between this frame and the frame the current embedding came from is under a
  threshold; comparing with the embedding's own frame (not the previous frame) keeps slow
  drift from accumulating, and a cap bounds how many frames in a row may reuse.

The cache keeps no more embeddings than the backend can keep valid at once
(engines.base.max_kept_embeddings), and asks the backend before handing one out.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from medsam_edge.engines.base import Backend, max_kept_embeddings
from medsam_edge.runtime.result import EXACT, FRESH, NEAR
from medsam_edge.runtime.segmenter import Encoded

THUMB = 32


@dataclass(frozen=True)
class ReusePolicy:
    exact: bool = True
    near: bool = True
    # Mean absolute thumbnail difference, as a fraction of the 0..255 range.
    threshold: float = 0.003
    max_consecutive: int = 10
    cache_size: int = 8

    @classmethod
    def off(cls) -> "ReusePolicy":
        return cls(exact=False, near=False)


def digest(image: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(image).data)
    h.update(repr(image.shape).encode())
    return h.digest()


def thumbnail(image: np.ndarray) -> np.ndarray:
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, 0..1."""
    return float(np.abs(a - b).mean()) / 255.0


class EmbeddingCache:
    """Decides, per frame, whether an embedding can be reused, and remembers fresh ones."""

    def __init__(self, policy: ReusePolicy, backend: Backend | None = None) -> None:
        self.policy = policy
        self.backend = backend
        self.capacity = policy.cache_size if backend is None else max_kept_embeddings(backend, policy.cache_size)
        self._by_digest: OrderedDict[bytes, Encoded] = OrderedDict()
        self._last: Encoded | None = None
        self._last_thumb: np.ndarray | None = None
        self._consecutive = 0

    def lookup(self, image: np.ndarray) -> tuple[Encoded | None, str, dict]:
        """-> (embedding or None, reason, keys to pass to store() if it was None)."""
        keys: dict = {}
        p = self.policy
        if p.exact and self.capacity:
            keys["digest"] = digest(image)
            hit = self._by_digest.get(keys["digest"])
            if hit is not None and not self._valid(hit):
                del self._by_digest[keys["digest"]]
                hit = None
            if hit is not None and hit.original_hw == image.shape[:2]:
                self._by_digest.move_to_end(keys["digest"])
                self._consecutive = 0
                return hit, EXACT, keys
        if p.near and self._last is not None and not self._valid(self._last):
            self._last = None
        if p.near and self._last is not None and self._last.original_hw == image.shape[:2]:
            keys["thumb"] = thumbnail(image)
            if self._consecutive < p.max_consecutive and difference(keys["thumb"], self._last_thumb) <= p.threshold:
                self._consecutive += 1
                return self._last, NEAR, keys
        return None, FRESH, keys

    def _valid(self, enc: Encoded) -> bool:
        return self.backend is None or self.backend.embedding_valid(enc.embedding)

    def store(self, image: np.ndarray, enc: Encoded, keys: dict) -> None:
        p = self.policy
        self._consecutive = 0
        if p.exact and self.capacity:
            self._by_digest[keys.get("digest") or digest(image)] = enc
            while len(self._by_digest) > self.capacity:
                self._by_digest.popitem(last=False)
        if p.near:
            self._last = enc
            self._last_thumb = keys["thumb"] if "thumb" in keys else thumbnail(image)
