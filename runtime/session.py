"""A session: one stream's state (prompts, tracker, embedding reuse, counters), fed one
frame at a time by whoever owns the capture loop.

    with predictor.session(prompts=[[x0, y0, x1, y1]], track=True) as s:
        for image in my_capture_sdk():          # HxWx3 uint8 RGB (or image_format="BGR")
            result = s.process(image)           # FrameResult: masks, scores, prompts, ...
            if clinician_drew_a_box:
                s.set_prompts([new_box])        # takes effect at the next frame

Deterministic: every frame is answered before process() returns. Real-time mode (encoder
in the background, never queueing) is runtime.realtime.RealtimeSession, built on the same
parts; runtime.stream wraps either around a source for pull-style iteration.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from medsam_edge.engines.base import ExpiredEmbedding
from medsam_edge.errors import InputError
from medsam_edge.runtime.frame import Frame, is_blank
from medsam_edge.runtime.motion import Motion
from medsam_edge.runtime.prompts import Prompt, Prompter
from medsam_edge.runtime.result import DECODED, FRESH, FrameResult
from medsam_edge.runtime.reuse import EmbeddingCache, Lookup, ReusePolicy
from medsam_edge.runtime.segmenter import Encoded, Segmenter
from medsam_edge.runtime.tracker import centroid_click

log = logging.getLogger(__name__)


@dataclass
class Stats:
    frames: int = 0
    blank: int = 0
    dropped: int = 0
    encoded: int = 0
    reencoded: int = 0  # embeddings that expired under the session and were computed again
    passed: int = 0  # real time: frames passed over while waiting for an embedding they could reach
    decoded_beside: int = 0  # real time: decodes run beside the answering thread and taken up
    embeddings: Counter = field(default_factory=Counter)
    made: Counter = field(default_factory=Counter)  # FrameResult.made of the frames answered

    def summary(self, skipped: int = 0) -> dict:
        fresh = self.embeddings.get(FRESH, 0)
        return {
            "frames": self.frames,
            "fresh": fresh,
            "reused": self.frames - fresh,
            "reuse_rate": round((self.frames - fresh) / self.frames, 4) if self.frames else 0.0,
            "by_kind": dict(self.embeddings),
            "encoded": self.encoded,
            "reencoded_expired": self.reencoded,
            "blank_skipped": self.blank,
            "bad_frames_skipped": skipped,
            "dropped": self.dropped,
            "passed_over": self.passed,
            "decoded_beside": self.decoded_beside,
            "by_made": dict(self.made),
        }


def as_frame(image, index: int, timestamp: float | None, source: str, image_format: str = "RGB") -> Frame:
    """A Frame from what a caller pushes: a Frame as is, else an HxW / HxWx3 / HxWx4 uint8 picture."""
    if isinstance(image, Frame):
        return image
    from medsam_edge.runtime.image import to_rgb

    now = time.perf_counter()
    return Frame(image=to_rgb(image, image_format), index=index,
                 timestamp=float(index if timestamp is None else timestamp), source=source, captured_at=now)


class Answerer:
    """Prompts -> masks for one frame and embedding: the decoder side both modes share.

    refine: a second decoder pass adds each box prompt's mask centroid as a positive click
    (TextSAM-EUS's box + centroid refinement), for prompts that have a box and a mask.
    keep_logits: results carry the low-res logits too.
    """

    def __init__(self, segmenter: Segmenter, prompter: Prompter, refine: bool = False,
                 keep_logits: bool = False) -> None:
        self.segmenter = segmenter
        self.prompter = prompter
        self.refine = refine
        self.keep_logits = keep_logits

    def answer(self, frame: Frame, enc: Encoded, kind: str, timings: dict, notes: list[str],
               prompts: list[Prompt] | None = None, motion: Motion | None = None) -> FrameResult:
        """prompts: this frame's (default: the prompter's); motion: the motion from the
        embedding's frame to this one, applied to the prompts before decoding and to the
        logits after it, so the tracker and the result see masks where the anatomy is now."""
        if prompts is None:
            prompts = self.prompter.prompts_for(frame)
        masks, scores, logits = self.decode(enc, prompts, motion, timings)
        refined = [False] * len(prompts)
        if self.refine and len(prompts):
            prompts, masks, scores, logits, refined = self._refine(enc, prompts, masks, scores, logits, motion,
                                                                   timings)
        lost = self.prompter.observe(masks, scores, frame.image)
        timings["total"] = sum(v for k, v in timings.items() if k != "capture_to_mask")
        if frame.captured_at:
            timings["capture_to_mask"] = (time.perf_counter() - frame.captured_at) * 1e3
        return FrameResult(
            frame=frame, prompts=prompts, masks=masks, scores=scores, reuse=kind, embedding=enc,
            # In real-time mode the newest embedding can come from a frame after this one: 0 then.
            staleness=max(0, frame.index - enc.frame_index), lost=lost, refined=refined,
            logits=logits if self.keep_logits else None, latency_ms=timings,
            backend=self.segmenter.backend.name, notes=notes, motion=None if motion is None else motion.record(),
            precision=self.segmenter.backend.precision,
            made=FRESH if enc.frame_index == frame.index else DECODED, prompts_version=self.prompter.version,
            embedding_ms=0.0 if enc.timestamp is None else max(0.0, (frame.timestamp - enc.timestamp) * 1e3),
        )

    def decode(self, enc: Encoded, prompts: list[Prompt], motion: Motion | None, timings: dict):
        """Segmenter.decode, through the motion when there is one to apply: prompts mapped
        into the embedding's frame, logits warped back (timings gain "motion")."""
        if motion is None or not motion.moved or not prompts:
            return self.segmenter.decode(enc, prompts, timings)
        seg = self.segmenter
        t0 = time.perf_counter()
        logits, scores = seg.decode_logits(enc, motion.map_prompts(prompts, enc.original_hw))
        seg.backend.sync()
        t1 = time.perf_counter()
        logits = motion.warp_logits(logits, enc.original_hw, enc.resized_hw, seg.pre)
        t2 = time.perf_counter()
        masks = seg.processing.masks(logits, enc.original_hw, enc.resized_hw)
        t3 = time.perf_counter()
        timings["decode"] = timings.get("decode", 0.0) + (t1 - t0) * 1e3
        timings["motion"] = timings.get("motion", 0.0) + (t2 - t1) * 1e3
        timings["postprocess"] = timings.get("postprocess", 0.0) + (t3 - t2) * 1e3
        return masks, scores, logits

    def _refine(self, enc, prompts, masks, scores, logits, motion, timings):
        again = {}
        for i, (p, m) in enumerate(zip(prompts, masks)):
            click = centroid_click(m) if p.box is not None else None
            if click is not None:
                again[i] = p.with_points([click], [1])
        if not again:
            return prompts, masks, scores, logits, [False] * len(prompts)
        t = {}
        m2, s2, l2 = self.decode(enc, list(again.values()), None if motion is None else motion.select(list(again)), t)
        timings["refine"] = t.get("decode", 0.0) + t.get("postprocess", 0.0)
        if "motion" in t:
            timings["motion"] = timings.get("motion", 0.0) + t["motion"]
        prompts, masks, scores, logits = list(prompts), masks.copy(), scores.copy(), logits.copy()
        for k, i in enumerate(again):
            prompts[i], masks[i], scores[i], logits[i] = again[i], m2[k], s2[k], l2[k]
        return prompts, masks, scores, logits, [i in again for i in range(len(prompts))]


class Session:
    """Deterministic push API: process(image) answers each frame before returning.

    One producer thread calls process(); set_prompts() may come from another thread and
    takes effect at the next frame. Blank frames (probe lifted) are answered with
    `blank=True` and no masks, and counted.
    """

    realtime = False

    def __init__(self, segmenter: Segmenter, prompter: Prompter, reuse: ReusePolicy | None = None,
                 refine: bool = False, keep_logits: bool = False, source: str = "session",
                 image_format: str = "RGB") -> None:
        self.segmenter = segmenter
        self.prompter = prompter
        self.answerer = Answerer(segmenter, prompter, refine, keep_logits)
        self.cache = EmbeddingCache(reuse or ReusePolicy(), segmenter.backend)
        self.stats = Stats()
        self.source = source
        self.image_format = image_format
        self._next_index = 0
        self.closed = False

    def set_prompts(self, prompts) -> int:
        """New prompts (Prompt objects or (N, 4) boxes) from the next frame on; a tracker
        restarts from them (none: it stops). Returns the version their answers carry."""
        return self.prompter.set_prompts(prompts)

    def process(self, image, timestamp: float | None = None, read_ms: float = 0.0) -> FrameResult:
        """image: HxWx3 uint8 (RGB unless the session's image_format is "BGR"), HxW grey,
        HxWx4 RGBA, or a Frame. Returns the frame's FrameResult."""
        if self.closed:
            raise InputError("this session is closed; open a new one with predictor.session()")
        frame = as_frame(image, self._next_index, timestamp, self.source, self.image_format)
        self._next_index = frame.index + 1
        timings = {"read": read_ms} if read_ms else {}
        if is_blank(frame.image):
            self.stats.blank += 1
            if self.stats.blank == 1:
                log.warning("%s frame %d: blank (near-black) frame skipped; later ones are only counted",
                            frame.source, frame.index)
            return FrameResult(frame=frame, prompts=[], masks=np.zeros((0, frame.height, frame.width), bool),
                               scores=np.zeros(0, np.float32), reuse=FRESH, blank=True, latency_ms=timings,
                               backend=self.segmenter.backend.name, precision=self.segmenter.backend.precision)
        notes: list[str] = []
        # The prompts first: where they are decides whether the last embedding still serves.
        prompts = self.prompter.prompts_for(frame)
        t0 = time.perf_counter()
        looked = self.cache.lookup(frame.image, prompts)
        enc, kind, motion = looked.enc, looked.kind, looked.motion
        timings["reuse_check"] = (time.perf_counter() - t0) * 1e3 - (motion.ms if motion else 0.0)
        if motion is not None:
            timings["motion"] = motion.ms
        if looked.note:
            notes.append(looked.note)
        if enc is None:
            enc = self._encode(frame, looked, timings)
        try:
            result = self.answerer.answer(frame, enc, kind, timings, notes, prompts, motion)
        except ExpiredEmbedding:
            # The backend took the embedding's storage back (device slots, a server that
            # restarted): compute it again, once, and say so in the record.
            self.stats.reencoded += 1
            notes.append("re-encoded: the embedding had expired")
            enc, kind = self._encode(frame, None, timings), FRESH
            timings.pop("motion", None)
            result = self.answerer.answer(frame, enc, kind, timings, notes, prompts)
        self.stats.frames += 1
        self.stats.embeddings[kind] += 1
        self.stats.made[result.made] += 1
        return result

    def _encode(self, frame: Frame, looked: Lookup | None, timings: dict) -> Encoded:
        enc = self.segmenter.encode(frame.image, frame.index, timings)
        enc.timestamp = frame.timestamp
        self.stats.encoded += 1
        self.cache.store(frame.image, enc, looked)
        return enc

    @property
    def prompts(self) -> list[Prompt] | None:
        """The prompts in use (a tracker's current ones), or None before the first frame."""
        return self.prompter.current()

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
