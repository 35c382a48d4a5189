"""What a session produces for each frame, and its one-line JSON record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medsam_edge.runtime.frame import Frame
from medsam_edge.runtime.prompts import Prompt

if TYPE_CHECKING:
    from medsam_edge.runtime.segmenter import Encoded

# How the frame's embedding was obtained (FrameResult.reuse):
FRESH = "fresh"  # encoded from this frame
EXACT = "exact-repeat"  # a cached embedding of a byte-identical frame (frozen image, looping cine)
NEAR = "near-repeat"  # the embedding of a recent, nearly identical frame
NEWEST = "newest"  # real-time mode: the newest one the background encoder has finished
REUSE_KINDS = (FRESH, EXACT, NEAR, NEWEST)
# How the frame's masks were made (FrameResult.made):
DECODED = "decoded"  # the decoder ran for this frame, on a kept (older) embedding
WARPED = "warped"  # the logits of an earlier decode on the same embedding and prompts, moved by the motion since
MADE_KINDS = (FRESH, DECODED, WARPED)  # FRESH: decoded on this frame's own embedding


@dataclass
class FrameResult:
    """Masks for one frame, with how they were made.

    frame: the Frame (its image is HxWx3 uint8 RGB).
    prompts: the N prompts used, in frame pixels (a tracked prompt's box is the propagated one).
    masks: (N, H, W) bool, one per prompt.
    scores: (N,) float32, the decoder's predicted IoU of each mask.
    reuse: one of REUSE_KINDS.
    embedding: the Encoded embedding the masks came from (its backend handle, frame size,
        and the index of the frame it was computed from).
    staleness: frames between this frame and the embedding's frame (0 when fresh).
    lost: per prompt, True where a propagated track lost its object.
    refined: per prompt, True where a second decoder pass added the mask's centroid.
    logits: (N, 1, 256, 256) float32 low-res logits, when the session keeps them.
    latency_ms: per stage ("read", "preprocess", "encode", "decode", "postprocess", ...),
        "total", and "capture_to_mask" where the capture time is known.
    backend: the backend that ran, as its describe() names it.
    precision: the precision it ran at (its describe()'s; "bf16" where --precision auto chose it).
    notes: what the record should say beyond the fields (e.g. "re-encoded: expired").
    blank: the frame was blank (probe lifted): nothing was segmented.
    measurements: physical sizes per prompt where the pixel spacing is known
        (runtime.measure.measurements: "mask_area_mm2", "equivalent_diameter_mm").
    motion: the motion compensated between the embedding's frame and this one
        (runtime.motion.Motion.record(): per prompt shift, scale, rotation), or why none
        was ({"applied": false, "why": ...}); None where none was attempted (a fresh
        embedding, motion compensation off).
    made: one of MADE_KINDS; why: what made the session decode (real-time mode: a new
        embedding, new prompts, prompts moved beyond the tolerance, motion that could not
        be followed), None where nothing needs saying.
    decode_frame: the frame whose answer ran the decoder these masks' logits came from
        (this frame unless warped); embedding_ms / decode_ms: the source-time age (ms) of
        the embedding's frame and of decode_frame. prompts_version: the Prompter's version
        of the prompts answered (0: those the session started with; set_prompts returns
        each new one).
    """

    frame: Frame
    prompts: list[Prompt]
    masks: np.ndarray
    scores: np.ndarray
    reuse: str
    embedding: "Encoded | None" = None
    staleness: int = 0
    lost: list[bool] = field(default_factory=list)
    refined: list[bool] = field(default_factory=list)
    logits: np.ndarray | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    precision: str = ""
    notes: list[str] = field(default_factory=list)
    blank: bool = False
    measurements: dict = field(default_factory=dict)
    motion: dict | None = None
    made: str = FRESH
    why: str | None = None
    decode_frame: int = -1
    embedding_ms: float = 0.0
    decode_ms: float = 0.0
    prompts_version: int = 0

    def __post_init__(self) -> None:
        if self.decode_frame < 0:
            self.decode_frame = self.frame.index

    @property
    def fresh(self) -> bool:
        return self.reuse == FRESH

    @property
    def embedding_frame(self) -> int:
        """Index of the frame the embedding was computed from (-1 if none)."""
        return -1 if self.embedding is None else int(self.embedding.frame_index)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 boxes of the prompts, NaN for a prompt without one."""
        return np.asarray([p.box if p.box is not None else np.full(4, np.nan, np.float32) for p in self.prompts],
                          np.float32).reshape(-1, 4)

    def record(self) -> dict:
        """The JSONL line: plain JSON types only, no pixels, no patient data."""
        return {
            "index": self.frame.index,
            "timestamp": round(float(self.frame.timestamp), 6),
            "prompts": [p.to_json() for p in self.prompts],
            "mask_area": [int(m.sum()) for m in self.masks],
            **self.measurements,
            "score": [round(float(s), 5) for s in self.scores],
            "lost": [bool(x) for x in self.lost],
            "refined": [bool(x) for x in self.refined],
            "reuse": self.reuse,
            "fresh": self.fresh,
            "embedding_frame": self.embedding_frame,
            "staleness": int(self.staleness),
            "motion": self.motion,
            "made": self.made,
            "why": self.why,
            "embedding_age_frames": int(self.staleness),
            "embedding_age_ms": round(float(self.embedding_ms), 3),
            "decode_frame": int(self.decode_frame),
            "decode_age_frames": max(0, self.frame.index - int(self.decode_frame)),
            "decode_age_ms": round(float(self.decode_ms), 3),
            "prompts_version": int(self.prompts_version),
            "latency_ms": {k: round(float(v), 3) for k, v in self.latency_ms.items()},
            "backend": self.backend,
            "precision": self.precision,
            **({"notes": list(self.notes)} if self.notes else {}),
            **({"blank": True} if self.blank else {}),
        }
