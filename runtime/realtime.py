"""Real-time mode: capture, encode and decode in separate threads with bounded queues.

The encoder always works on the newest captured frame; the decoder answers every frame
with the newest embedding finished so far. When the encoder is slower than the video it
simply skips frames (their masks come from a slightly older embedding, marked "newest"
with its staleness). When even the decoder falls behind, the oldest waiting frame is
dropped and counted: no queue grows, so capture-to-mask latency stays flat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Iterable, Iterator

from medsam_edge.runtime.frame import Frame, is_blank
from medsam_edge.runtime.pipeline import Stats, make_result
from medsam_edge.runtime.prompts import Prompter
from medsam_edge.runtime.result import FrameResult
from medsam_edge.runtime.segmenter import Encoded, Segmenter

log = logging.getLogger(__name__)
_END = object()


def split_threads(threads: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(encoder, decoder) CPU threads for real-time mode out of `threads` (default: every core).

    In real-time mode encoder and decoder run at the same time. With onnxruntime's default
    each session takes every core and the two spin against each other: LiteMedSAM on 2
    cores gave 7.5 masks/s that way and 12.6 with one thread each (BENCHMARKS.md). The
    decoder is small, so it gets one core and the encoder the rest.
    """
    total = max(1, threads or cores or _usable_cores())
    return max(1, total - 1), 1


def _usable_cores() -> int:
    # A container or taskset may allow fewer cores than the machine has.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class RealtimeStream:
    def __init__(
        self,
        segmenter: Segmenter,
        frames: Iterable[Frame],
        prompter: Prompter,
        pace: bool = False,
        queue_size: int = 2,
    ) -> None:
        """pace: replay a file at its own frame rate (frame.timestamp), as a live source would arrive."""
        self.segmenter = segmenter
        self.frames = frames
        self.prompter = prompter
        self.pace = pace
        self.stats = Stats()
        self.encoded = 0
        self._queue: deque = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._newest_frame: Frame | None = None
        self._newest_enc: Encoded | None = None
        self._done = False
        self._error: BaseException | None = None

    # -- capture thread ---------------------------------------------------------------
    def _capture(self) -> None:
        start = time.perf_counter()
        try:
            for frame in self.frames:
                if self.pace:
                    delay = start + frame.timestamp - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                frame.captured_at = time.perf_counter()
                with self._cond:
                    if len(self._queue) >= self._queue_size:
                        self._queue.popleft()
                        self.stats.dropped += 1
                    self._queue.append(frame)
                    self._newest_frame = frame
                    self._cond.notify_all()
                if self._done:
                    return
        except BaseException as e:  # surfaced in the consumer's thread
            self._error = e
        finally:
            with self._cond:
                self._queue.append(_END)
                self._cond.notify_all()

    # -- encoder thread ---------------------------------------------------------------
    def _encode(self) -> None:
        last_index = None
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._done or (self._newest_frame is not None and self._newest_frame.index != last_index)
                    )
                    if self._done:
                        return
                    frame = self._newest_frame
                last_index = frame.index
                if is_blank(frame.image):
                    continue
                enc = self.segmenter.encode(frame.image, frame.index)
                with self._cond:
                    self._newest_enc = enc
                    self.encoded += 1
                    self._cond.notify_all()
        except BaseException as e:
            self._error = e
            with self._cond:
                self._done = True
                self._cond.notify_all()

    # -- decoder: the consumer's thread ----------------------------------------------------
    def __iter__(self) -> Iterator[FrameResult]:
        threads = [threading.Thread(target=f, name=n, daemon=True)
                   for f, n in ((self._capture, "capture"), (self._encode, "encode"))]
        for t in threads:
            t.start()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._queue or self._done)
                    if self._error is not None:
                        raise self._error
                    item = self._queue.popleft() if self._queue else _END
                if item is _END:
                    break
                result = self._answer(item)
                if result is not None:
                    yield result
            if self._error is not None:
                raise self._error
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()
            for t in threads:
                t.join(timeout=5)

    def _answer(self, frame: Frame) -> FrameResult | None:
        if is_blank(frame.image):
            self.stats.blank += 1
            return None
        with self._cond:
            # The first frames wait for the first embedding; a frame of another size than the
            # newest embedding's waits for one of its own size.
            self._cond.wait_for(lambda: self._done or (
                self._newest_enc is not None and self._newest_enc.original_hw == frame.image.shape[:2]))
            if self._error is not None:
                raise self._error
            enc = self._newest_enc
        if enc is None:
            return None
        timings: dict = {}
        boxes = self.prompter.boxes_for(frame)
        masks, scores, _ = self.segmenter.decode(enc, boxes, timings)
        lost = self.prompter.observe(masks, scores)
        kind = "fresh" if enc.frame_index == frame.index else "newest"
        self.stats.frames += 1
        self.stats.embeddings[kind] += 1
        timings["total"] = sum(timings.values())
        return make_result(frame, boxes, masks, scores, enc, kind, lost, timings, self.segmenter.backend.name)
