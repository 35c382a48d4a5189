"""What the pipeline produces for each frame, and its one-line JSON record."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsam_edge.runtime.frame import Frame

# Stages timed per frame, in pipeline order.
STAGES = ("read", "preprocess", "encode", "decode", "postprocess", "write")


@dataclass
class FrameResult:
    """Masks for one frame, with how they were made.

    boxes: (N, 4) float32 x0, y0, x1, y1 in the frame's pixels (the prompts used).
    masks: (N, H, W) bool.
    scores: (N,) the decoder's predicted IoU for each mask.
    embedding: "fresh" (encoded from this frame), "prompt-only" (same frame, new boxes),
        "exact-repeat" (cache hit by frame digest), "near-repeat" (a similar recent frame's)
        or "newest" (real-time mode: the newest embedding the background encoder finished).
    embedding_frame: index of the frame the embedding was computed from.
    staleness: frames between this frame and `embedding_frame` (0 when fresh).
    lost: per box, True where a propagated track lost its object (empty mask or low score).
    latency_ms: per stage in STAGES that ran, plus "total"; "capture_to_mask" where known.
    """

    frame: Frame
    boxes: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    embedding: str
    embedding_frame: int
    staleness: int = 0
    lost: list[bool] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    backend: str = ""

    @property
    def fresh(self) -> bool:
        return self.embedding == "fresh"

    def record(self) -> dict:
        """The JSONL line: plain JSON types only, no pixels, no patient data."""
        return {
            "index": self.frame.index,
            "timestamp": round(float(self.frame.timestamp), 6),
            "boxes": [[round(float(v), 2) for v in b] for b in np.asarray(self.boxes).reshape(-1, 4)],
            "mask_area": [int(m.sum()) for m in self.masks],
            "score": [round(float(s), 5) for s in self.scores],
            "lost": [bool(x) for x in self.lost],
            "embedding": self.embedding,
            "fresh": self.fresh,
            "embedding_frame": int(self.embedding_frame),
            "staleness": int(self.staleness),
            "latency_ms": {k: round(float(v), 3) for k, v in self.latency_ms.items()},
            "backend": self.backend,
        }
