"""Deterministic mode: every frame, in order, each answered before the next is read.

Sources, prompts, reuse and the segmenter are separate objects; this module is only the
wiring between them (real-time mode wires the same parts across threads: realtime.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from medsam_edge.runtime.frame import Frame, is_blank
from medsam_edge.runtime.prompts import Prompter
from medsam_edge.runtime.result import FrameResult
from medsam_edge.runtime.reuse import EmbeddingCache, ReusePolicy
from medsam_edge.runtime.segmenter import Encoded, Segmenter

log = logging.getLogger(__name__)


@dataclass
class Stats:
    frames: int = 0
    blank: int = 0
    dropped: int = 0
    embeddings: Counter = field(default_factory=Counter)

    def summary(self, skipped: int = 0) -> dict:
        fresh = self.embeddings.get("fresh", 0)
        return {
            "frames": self.frames,
            "fresh": fresh,
            "reused": self.frames - fresh,
            "reuse_rate": round((self.frames - fresh) / self.frames, 4) if self.frames else 0.0,
            "by_kind": dict(self.embeddings),
            "blank_skipped": self.blank,
            "bad_frames_skipped": skipped,
            "dropped": self.dropped,
        }


class Stream:
    """Iterate FrameResults over a source, deterministically."""

    def __init__(
        self,
        segmenter: Segmenter,
        frames: Iterable[Frame],
        prompter: Prompter,
        reuse: ReusePolicy = ReusePolicy.off(),
    ) -> None:
        self.segmenter = segmenter
        self.frames = frames
        self.prompter = prompter
        self.cache = EmbeddingCache(reuse)
        self.stats = Stats()

    def __iter__(self) -> Iterator[FrameResult]:
        it = iter(self.frames)
        while True:
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                return
            read_ms = (time.perf_counter() - t0) * 1e3
            if is_blank(frame.image):
                self.stats.blank += 1
                if self.stats.blank == 1:
                    log.warning("%s frame %d: blank (near-black) frame skipped; later ones are only counted",
                                frame.source, frame.index)
                continue
            yield self.process(frame, read_ms)

    def process(self, frame: Frame, read_ms: float = 0.0) -> FrameResult:
        timings = {"read": read_ms}
        boxes = self.prompter.boxes_for(frame)
        t0 = time.perf_counter()
        enc, kind, keys = self.cache.lookup(frame.image)
        timings["preprocess"] = (time.perf_counter() - t0) * 1e3
        if enc is None:
            enc = self.segmenter.encode(frame.image, frame.index, timings)
            self.cache.store(frame.image, enc, keys)
        masks, scores, _ = self.segmenter.decode(enc, boxes, timings)
        lost = self.prompter.observe(masks, scores)
        self.stats.frames += 1
        self.stats.embeddings[kind] += 1
        timings["total"] = sum(timings.values())
        return make_result(frame, boxes, masks, scores, enc, kind, lost, timings, self.segmenter.backend.name)


def make_result(frame: Frame, boxes, masks, scores, enc: Encoded, kind: str, lost, timings: dict,
                backend: str) -> FrameResult:
    if frame.captured_at:
        timings["capture_to_mask"] = (time.perf_counter() - frame.captured_at) * 1e3
    return FrameResult(
        frame=frame,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        masks=masks,
        scores=scores,
        embedding=kind,
        embedding_frame=enc.frame_index,
        # In real-time mode the newest embedding can come from a frame after this one: 0 then.
        staleness=max(0, frame.index - enc.frame_index),
        lost=lost,
        latency_ms=timings,
        backend=backend,
    )
