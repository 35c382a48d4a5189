"""Real-time mode: every captured frame answered at the capture rate; the encoder works in
the background on the newest frame; nothing queues.

    with predictor.session(prompts=[box], realtime=True, on_result=show) as s:
        def on_frame(image):            # your SDK's capture callback
            s.submit(image)             # never blocks; an older waiting frame is dropped
        ...                             # show(result) runs in the session's answering thread

The decoder runs once per (embedding, prompts as mapped into the embedding's frame). Every
frame in between is answered by warping those low-res logits with the motion from the
embedding's frame to this one, composed from consecutive-frame motions and corrected by one
direct estimate (runtime.follow): a few ms, so the frame rate never waits for the decoder
and the encoder gets the cores. The decoder runs again when a new embedding lands or a
fixed box has moved beyond PROMPT_TOLERANCE of its size on the anatomy; that decode runs
beside the answering thread, which meanwhile answers from the last one. A tracker's box
counts at the next embedding. The caller's new prompts are decoded at once, never answered
with old logits. Where the motion cannot be followed (a cut, a probe lift, a blank frame
between, flow that explains nothing) a frame is not warped; it waits for an embedding it
can reach (the encoder takes the newest frame taken up next), and its answer's record says
why. Frames passed over while waiting are counted (Stats.passed).

Each FrameResult says how its masks were made (made: "fresh", "decoded" on a kept
embedding, "warped"), how old its embedding and its decode are (frames and source ms),
and which prompts version it answers; prompts changed mid-stream are never answered with
logits decoded for the old ones. With motion off, every frame is decoded on the newest
embedding as it is (no warping). Without on_result, the caller pulls: next_result()
answers the oldest waiting frame in the caller's thread, latest() returns the newest answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable

from medsam_edge.errors import InputError
from medsam_edge.runtime.frame import Frame, is_blank
from medsam_edge.runtime.prompts import Prompter
from medsam_edge.runtime.realtime_answer import RealtimeAnswerer, Taken
from medsam_edge.runtime.result import FrameResult
from medsam_edge.runtime.reuse import EmbeddingCache, ReusePolicy
from medsam_edge.runtime.segmenter import Segmenter
from medsam_edge.runtime.session import Stats, as_frame
from medsam_edge.runtime.small_frame import SmallFrame

log = logging.getLogger(__name__)
# Embeddings kept for answering, where the backend can keep them valid: about 16 s of
# encodes at 1 s each, enough to find a view again after a cut.
KEPT = 16
def split_threads(threads: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(encoder, decoder) CPU threads for real-time mode out of `threads` (default: every core).

    Encoder and decoder run at the same time. When the decoder answered every frame, two
    sessions each taking every core spun against each other (LiteMedSAM on 2 cores: 7.5
    masks/s that way, 12.6 with one thread each; BENCHMARKS.md), so the decoder had a core of
    its own. Now most frames are warped and the decoder runs once per embedding or prompt
    change, on the answering thread with one thread: the encoder gets every core
    (docs/decisions.md#real-time-at-the-capture-rate-prompt-tolerance-and-the-thread-split).
    """
    total = max(1, threads or cores or usable_cores())
    return total, 1


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
    session takes up, and returns the version its answers will carry. An error in the
    encoder or answering thread is raised in the caller's next submit(), next_result()
    or latest().
    """

    realtime = True

    def __init__(self, segmenter: Segmenter, prompter: Prompter, refine: bool = False, keep_logits: bool = False,
                 on_result: Callable[[FrameResult], None] | None = None, queue_size: int = 2,
                 source: str = "session", image_format: str = "RGB", motion: bool = True) -> None:
        if queue_size < 1:
            raise InputError(f"queue_size {queue_size}: at least one frame must be able to wait")
        self.segmenter = segmenter
        self.prompter = prompter
        self.stats = Stats()
        self.source = source
        self.image_format = image_format
        self.on_result = on_result
        self.motion = motion
        # The embeddings answers may come from: the same cache and policy as deterministic
        # reuse (its scene threshold and refusals), stored from the encoder's thread.
        self.cache = EmbeddingCache(ReusePolicy(exact=False, motion=motion, cache_size=KEPT if motion else 1),
                                    segmenter.backend)
        self.answerer = RealtimeAnswerer(segmenter, prompter, self.cache, self.stats, motion, refine, keep_logits,
                                         gap=queue_size + 1)
        self._queue: deque[Frame] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._newest_frame: Frame | None = None
        self._generation = 0  # embeddings finished so far
        self._held: list[Taken] = []  # frames taken up, waiting for an embedding that reaches them
        self._tried = -1  # embeddings finished when the held frames were last tried (-1: not since one was taken)
        self._latest: FrameResult | None = None
        self._ended = False
        self.closed = False
        self._error: BaseException | None = None
        self._next_index = 0
        self._threads: list[threading.Thread] = []

    # -- producer ------------------------------------------------------------------------
    def set_prompts(self, prompts) -> int:
        """New prompts from the next frame on; returns the version their answers carry."""
        return self.prompter.set_prompts(prompts)

    def submit(self, image, timestamp: float | None = None) -> None:
        """Hand over a frame; returns at once. An older frame still waiting is dropped (counted)."""
        self._raise_error()
        if self.closed or self._ended:
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
            if self.answerer.chain is None and not is_blank(frame.image):
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
        on timeout. Blank frames are counted, not answered.

        Frames are taken up (prompts chosen, motion followed) in order. One that no
        embedding reaches yet is held (at most queue_size of them) until one does; when a
        later held frame is answered first, the older ones are passed over (counted)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            if self._held and self._tried != self._generation:
                self._tried = self._generation
                for k, taken in enumerate(self._held):
                    result = self.answerer.answer(taken)
                    if result is not None:
                        self.stats.passed += k
                        del self._held[:k + 1]
                        self._tried = -1
                        with self._cond:
                            self._latest = result
                        return result
            with self._cond:
                held = bool(self._held)
                ready = lambda: (self._queue or self.closed or self._error or  # noqa: E731
                                 (self._generation != self._tried if held else self._ended))
                left = None if deadline is None else max(0.0, deadline - time.perf_counter())
                if not self._cond.wait_for(ready, left):
                    return None
                self._raise_error()
                if self.closed:
                    return None
                if not self._queue:
                    if held:
                        continue  # a new embedding: try the held frames again
                    return None
                frame = self._queue.popleft()
            if is_blank(frame.image):
                self.stats.blank += 1
                self.answerer.blank()
                continue
            if len(self._held) >= self._queue_size:
                del self._held[0]
                self.stats.passed += 1
            self._held.append(self.answerer.take(frame))
            self._tried = -1  # a frame not tried yet
            if self.answerer.chain is not None:
                # The encoder takes the newest frame of the motion chain, not the newest
                # submitted: a frame dropped from the queue never joins the chain, and an
                # embedding of it could be reached from no answered frame.
                with self._cond:
                    self._newest_frame = frame
                    self._cond.notify_all()

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
            loops.append((self._answer_loop, "medsam-answer"))
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
                    self._cond.wait_for(lambda: self.closed or self._error or (
                        self._newest_frame is not None and self._newest_frame is not last))
                    if self.closed or self._error:
                        return
                    frame = last = self._newest_frame
                enc = self.segmenter.encode(frame.image, frame.index)
                enc.timestamp = frame.timestamp
                self.cache.store(frame.image, enc, small=SmallFrame.of(frame.image))
                with self._cond:
                    self._generation += 1
                    self.stats.encoded += 1
                    self._cond.notify_all()
        except BaseException as e:  # surfaced in the caller's thread
            self._fail(e)

    def _answer_loop(self) -> None:
        try:
            while True:
                result = self.next_result()
                if result is None:
                    return
                self.on_result(result)
        except BaseException as e:
            self._fail(e)

    def close(self) -> None:
        """Stop the threads (a frame being encoded finishes first); safe to call twice."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=30)
        self.answerer.close()

    def __enter__(self) -> "RealtimeSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
