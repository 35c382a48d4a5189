"""Play frames to a real-time session at a fixed capture rate, as a probe delivers them.

Frame i is submitted at start + i / fps whatever the session is doing (a capture card does
not wait), so two runs on an idle machine see the same schedule; what differs between runs
is only which frames the session drops. Each answer keeps its mask bit-packed (a 2,000-frame
run of 512x512 masks is 64 MB that way, not 512 MB) with how it was made.

    played = play(predictor, lambda i: frames[i % len(frames)], n=2000, fps=30, prompts=[box], track=True)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from medsam_edge.errors import InputError

# How long the last frames may take to come back after the last submit.
DRAIN_S = 60.0


@dataclass
class Answer:
    index: int
    shape: tuple[int, int]
    packed: np.ndarray  # np.packbits of the first prompt's mask
    capture_to_mask_ms: float | None
    reuse: str
    made: str | None  # fresh / decoded / warped where the runtime records it
    embedding_age_frames: int | None
    embedding_age_ms: float | None
    decode_age_frames: int | None
    decode_age_ms: float | None
    why: str | None
    lost: bool
    arrived: float = 0.0  # perf_counter when the answer came back

    @property
    def mask(self) -> np.ndarray:
        h, w = self.shape
        return np.unpackbits(self.packed, count=h * w).reshape(h, w).astype(bool)


def answer_of(r) -> Answer:
    """What a FrameResult says about its first prompt's mask. The fields `made`, the ages and
    `why` come from the real-time mode that answers by warping logits; older runtimes lack
    them (None), and the staleness stands in for the embedding's age in frames."""
    masks = r.masks
    h, w = masks.shape[1:] if masks.ndim == 3 else r.frame.image.shape[:2]
    first = masks[0] if len(masks) else np.zeros((h, w), bool)
    age = getattr(r, "embedding_age_frames", None)
    decode_frame = getattr(r, "decode_frame", None)
    decode_age = getattr(r, "decode_age_frames", None)
    if decode_age is None and decode_frame is not None:
        decode_age = max(0, int(r.frame.index) - int(decode_frame))
    return Answer(
        index=int(r.frame.index), shape=(int(h), int(w)), packed=np.packbits(first.ravel()),
        capture_to_mask_ms=r.latency_ms.get("capture_to_mask"), reuse=r.reuse, made=getattr(r, "made", None),
        embedding_age_frames=int(r.staleness) if age is None else int(age),
        # The record names them *_age_*; the result's own fields are embedding_ms / decode_ms.
        embedding_age_ms=_first(r, "embedding_age_ms", "embedding_ms"), decode_age_frames=decode_age,
        decode_age_ms=_first(r, "decode_age_ms", "decode_ms"), why=getattr(r, "why", None),
        lost=bool(r.lost[0]) if len(r.lost) else False)


def _first(r, *names: str):
    for n in names:
        v = getattr(r, n, None)
        if v is not None:
            return float(v)
    return None


@dataclass
class Played:
    fps: float
    submitted: int
    answers: list[Answer]
    dropped: int
    blank: int
    encoded: int
    seconds: float  # first submit to last answer
    late_submits: int  # frames submitted more than a frame period after their due time
    stats: dict = field(default_factory=dict)
    submitted_at: list[float] = field(default_factory=list)  # perf_counter of each submit

    @property
    def first_answered(self) -> int | None:
        return min((a.index for a in self.answers), default=None)

    def after_first_answer(self) -> tuple[int, int]:
        """(answered, captured) over the frames captured after the first answer came back:
        the frames before it wait for the first embedding, which no schedule can answer."""
        if not self.answers:
            return 0, 0
        first = min(a.arrived for a in self.answers)
        later = {i for i, t in enumerate(self.submitted_at) if t >= first}
        return sum(a.index in later for a in self.answers), len(later)

    def answered_share_after_first(self) -> float | None:
        answered, captured = self.after_first_answer()
        return round(answered / captured, 4) if captured else None


def play(predictor, frame_at: Callable[[int], np.ndarray], n: int, fps: float, prompts, track: bool = False,
         motion: bool = True) -> Played:
    """Submit n frames (frame_at(i), HxWx3 uint8 RGB) at `fps` to a real-time session of
    `predictor`, collect every answer, and wait for the last ones (at most DRAIN_S)."""
    if fps <= 0 or n <= 0:
        raise InputError(f"lockstep: fps {fps} and frames {n} must be positive")
    answers: list[Answer] = []
    lock = threading.Lock()

    def on_result(r) -> None:
        a = answer_of(r)
        a.arrived = time.perf_counter()
        with lock:
            answers.append(a)

    period = 1.0 / fps
    late = 0
    submitted_at: list[float] = []
    with predictor.session(prompts=prompts, track=track, realtime=True, on_result=on_result, motion=motion) as s:
        start = time.perf_counter()
        for i in range(n):
            image = frame_at(i)
            due = start + i * period
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            elif now - due > period:
                late += 1
            submitted_at.append(time.perf_counter())
            s.submit(image, timestamp=i * period)
        s.end()
        deadline = time.perf_counter() + DRAIN_S
        while time.perf_counter() < deadline:
            s.latest()  # raises an error of the session's threads here
            with lock:
                done = len(answers)
            if done + s.stats.dropped + s.stats.passed + s.stats.blank >= n:
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        stats = s.stats.summary()
        encoded = s.stats.encoded
    answers.sort(key=lambda a: a.index)
    # Frames the session passed over while they waited for an embedding they could reach
    # were not answered either: dropped, for these rows.
    return Played(fps=fps, submitted=n, answers=answers, dropped=stats["dropped"] + stats.get("passed_over", 0),
                  blank=stats["blank_skipped"],
                  encoded=encoded, seconds=seconds, late_submits=late, stats=stats,
                  submitted_at=submitted_at)
