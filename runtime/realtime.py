"""Real-time mode: the encoder works in the background on the newest frame; every frame is
answered by the decoder with the newest embedding finished so far; nothing queues.

    with predictor.session(prompts=[box], realtime=True, on_result=show) as s:
        def on_frame(image):            # your SDK's capture callback
            s.submit(image)             # never blocks; an older waiting frame is dropped
        ...                             # show(result) runs in the session's decoder thread

When the encoder is slower than the video it skips frames (their masks come from a
slightly older embedding, marked "newest" with its staleness). The anatomy has moved
since that embedding's frame: with `motion` on (the default) each newest answer maps
its prompts into the embedding's frame and warps the masks to where the anatomy is now
(runtime.motion); where the flow explains nothing the answer is left uncompensated and
its record says why. Anatomy also comes back (a heartbeat, breathing, a looping cine):
with motion on, the session keeps the last few embeddings and answers each frame with
the one whose frame is closest where the prompts are (reuse "near-repeat" when that is
not the newest), so a frame is answered from the same phase of the cycle when one was
encoded. With motion off, every frame is answered from the newest embedding as it is.

When even the decoder falls behind, the oldest waiting frame is dropped and counted:
capture-to-mask latency stays flat. Without on_result, the caller pulls: next_result()
answers the oldest waiting frame in the caller's thread, latest() returns the newest answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable

from medsam_edge.engines.base import ExpiredEmbedding, max_kept_embeddings
from medsam_edge.errors import InputError
from medsam_edge.runtime.frame import Frame, is_blank
from medsam_edge.runtime.motion import MotionEstimator, Probe
from medsam_edge.runtime.prompts import Prompter
from medsam_edge.runtime.result import FRESH, NEAR, NEWEST, FrameResult
from medsam_edge.runtime.reuse import Kept, closest
from medsam_edge.runtime.segmenter import Encoded, Segmenter
from medsam_edge.runtime.session import Answerer, Stats, as_frame

log = logging.getLogger(__name__)
# Attempts at a frame whose newest embedding expired before the decoder read it.
_EXPIRY_RETRIES = 3
# Embeddings kept for answering (motion on), where the backend can keep them valid: about
# 16 s of encodes at 1 s each on two cores, enough to find a heartbeat's phase again.
KEPT = 16


def split_threads(threads: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(encoder, decoder) CPU threads for real-time mode out of `threads` (default: every core).

    In real-time mode encoder and decoder run at the same time; with onnxruntime's default
    each session takes every core and the two spin against each other
    (docs/decisions.md#real-time-thread-split). The decoder is small, so it gets one core
    and the encoder the rest.
    """
    total = max(1, threads or cores or usable_cores())
    return max(1, total - 1), 1


def usable_cores() -> int:
    # A container or taskset may allow fewer cores than the machine has.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class RealtimeSession:
    """Real-time push API: submit() from the producer, results by callback or pull.

    Safe for one producer thread (submit, end) and one consumer (next_result or the
    callback, latest); set_prompts() from any thread takes effect at the next frame the
    decoder starts. An error in the encoder or decoder thread is raised in the caller's
    next submit(), next_result() or latest().
    """

    realtime = True

    def __init__(self, segmenter: Segmenter, prompter: Prompter, refine: bool = False, keep_logits: bool = False,
                 on_result: Callable[[FrameResult], None] | None = None, queue_size: int = 2,
                 source: str = "session", image_format: str = "RGB", motion: bool = True) -> None:
        if queue_size < 1:
            raise InputError(f"queue_size {queue_size}: at least one frame must be able to wait")
        self.segmenter = segmenter
        self.prompter = prompter
        self.answerer = Answerer(segmenter, prompter, refine, keep_logits)
        self.stats = Stats()
        self.source = source
        self.image_format = image_format
        self.on_result = on_result
        self._queue: deque[Frame] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._newest_frame: Frame | None = None
        self._newest_enc: Encoded | None = None
        self.motion = motion
        self._estimator = MotionEstimator() if motion else None
        # The embeddings answers may come from, newest last, with their frames as the
        # motion estimate and change detection see them.
        self._kept: deque[Kept] = deque(maxlen=max(1, max_kept_embeddings(segmenter.backend, KEPT)) if motion else 1)
        self._generation = 0  # embeddings finished so far
        self._latest: FrameResult | None = None
        self._ended = self._closed = False
        self._error: BaseException | None = None
        self._next_index = 0
        self._threads: list[threading.Thread] = []

    # -- producer ------------------------------------------------------------------------
    def set_prompts(self, prompts) -> None:
        self.prompter.set_prompts(prompts)

    def submit(self, image, timestamp: float | None = None) -> None:
        """Hand over a frame; returns at once. An older frame still waiting is dropped (counted)."""
        self._raise_error()
        if self._closed or self._ended:
            raise InputError("this real-time session is closed (or ended); open a new one with predictor.session()")
        frame = as_frame(image, self._next_index, timestamp, self.source, self.image_format)
        self._next_index = frame.index + 1
        if not frame.captured_at:
            frame.captured_at = time.perf_counter()
        self._start()
        with self._cond:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(frame)
            if not is_blank(frame.image):
                self._newest_frame = frame
            self._cond.notify_all()

    def end(self) -> None:
        """No more frames: next_result() answers what waits, then returns None."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    # -- consumer ------------------------------------------------------------------------
    def next_result(self, timeout: float | None = None) -> FrameResult | None:
        """Answer the oldest waiting frame (in this thread); None once ended and drained, or
        on timeout. Blank frames are counted, not answered."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._queue or self._ended or self._closed or self._error,
                                           None if deadline is None else max(0.0, deadline - time.perf_counter())):
                    return None
                self._raise_error()
                if not self._queue:
                    return None
                frame = self._queue.popleft()
            if is_blank(frame.image):
                self.stats.blank += 1
                continue
            result = self._answer(frame)
            if result is not None:
                with self._cond:
                    self._latest = result
                return result

    def latest(self) -> FrameResult | None:
        """The newest answer so far (poll style), or None."""
        self._raise_error()
        with self._cond:
            return self._latest

    @property
    def encoded(self) -> int:
        return self.stats.encoded

    # -- threads -------------------------------------------------------------------------
    def _start(self) -> None:
        if self._threads:
            return
        loops = [(self._encode_loop, "medsam-encoder")]
        if self.on_result is not None:
            loops.append((self._decode_loop, "medsam-decoder"))
        self._threads = [threading.Thread(target=f, name=n, daemon=True) for f, n in loops]
        for t in self._threads:
            t.start()

    def _fail(self, e: BaseException) -> None:
        with self._cond:
            self._error = self._error or e
            self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _encode_loop(self) -> None:
        last = None
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self._error or (
                        self._newest_frame is not None and self._newest_frame is not last))
                    if self._closed or self._error:
                        return
                    frame = last = self._newest_frame
                enc = self.segmenter.encode(frame.image, frame.index)
                kept = Kept(enc, Probe.of(frame.image)) if self._estimator else None
                with self._cond:
                    self._newest_enc = enc
                    if kept is not None:
                        self._kept.append(kept)
                    self._generation += 1
                    self.stats.encoded += 1
                    self._cond.notify_all()
        except BaseException as e:  # surfaced in the caller's thread
            self._fail(e)

    def _decode_loop(self) -> None:
        try:
            while True:
                result = self.next_result()
                if result is None:
                    return
                self.on_result(result)
        except BaseException as e:
            self._fail(e)

    def _answer(self, frame: Frame) -> FrameResult | None:
        notes: list[str] = []
        prompts = self.prompter.prompts_for(frame)
        probe = None
        for attempt in range(_EXPIRY_RETRIES):
            with self._cond:
                # The first frames wait for the first embedding; a frame of another size than
                # the newest embedding's waits for one of its own size.
                self._cond.wait_for(lambda: self._closed or self._error or (
                    self._newest_enc is not None and self._newest_enc.original_hw == frame.image.shape[:2]))
                self._raise_error()
                if self._closed:
                    return None
                enc = newest = self._newest_enc
                generation = self._generation
                kept = [k for k in self._kept if k.enc.original_hw == frame.image.shape[:2]]
            timings: dict = {}
            motion = None
            if enc.frame_index != frame.index and self._estimator is not None and prompts and kept:
                t0 = time.perf_counter()
                probe = probe or Probe.of(frame.image)
                valid = [k for k in kept if self.segmenter.backend.embedding_valid(k.enc.embedding)] or kept[-1:]
                verdict = closest(valid, probe, prompts)
                chosen = verdict.kept or valid[-1]
                enc = chosen.enc
                timings["reuse_check"] = (time.perf_counter() - t0) * 1e3
                if enc.frame_index != frame.index:
                    motion = self._estimator.estimate(chosen.probe, probe, prompts,
                                                      verdict.regions if verdict.kept is chosen else None)
                    timings["motion"] = motion.ms
                    if not motion.applied:
                        notes.append(f"motion not compensated: {motion.why}")
            kind = FRESH if enc.frame_index == frame.index else NEWEST if enc is newest else NEAR
            try:
                result = self.answerer.answer(frame, enc, kind, timings, notes, prompts, motion)
            except ExpiredEmbedding:
                # Its slot was taken by an encode that finished since: wait for that one.
                self.stats.reencoded += 1
                notes.append("newest embedding expired before decoding; took the next one")
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self._error or self._generation != generation)
                continue
            self.stats.frames += 1
            self.stats.embeddings[kind] += 1
            return result
        raise ExpiredEmbedding(f"frame {frame.index}: every embedding expired before the decoder could read it")

    def close(self) -> None:
        """Stop the threads (a frame being encoded finishes first); safe to call twice."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=30)

    def __enter__(self) -> "RealtimeSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
