"""Pull-style iteration: a source's frames through a session, one FrameResult per frame.

The CLI, Predictor.stream() and the benchmarks all iterate this; the session (either
mode) is the one place that wires prompts, reuse and the decoder. In real-time mode a
capture thread feeds the session at the source's own pace (a file is replayed at its
frame rate, as a live probe would deliver it) and the caller's thread decodes.
"""

from __future__ import annotations

import threading
import time
from itertools import islice
from typing import Iterator

from medsam_edge.runtime.result import FrameResult
from medsam_edge.runtime.session_protocol import AnySession, ProcessingSession, SubmittingSession


CAPTURE_JOIN_S = 5.0  # a live source that blocks longer than this in one read is closed under it


class Stream:
    """Iterate for FrameResults; close() (or leaving a with block, or breaking out of the
    loop) stops the session's threads and closes the source if this stream opened it.

    session: a ProcessingSession (runtime.session.Session) or a SubmittingSession
        (runtime.realtime.RealtimeSession), as runtime.session_protocol describes them.
    source: a runtime.sources.Source (or any iterable of Frames).
    pace: real-time mode only: deliver frames at their timestamps (default: unless live).
    max_frames: stop after this many frames of the source.
    """

    def __init__(self, session: AnySession, source, *, owns_source: bool = True, pace: bool | None = None,
                 max_frames: int | None = None) -> None:
        self.session = session
        self.source = source
        self.owns_source = owns_source
        self.pace = (not getattr(source, "is_live", False)) if pace is None else pace
        self.max_frames = max_frames
        self.frames_read = 0
        self.ended_early = False  # the caller stopped iterating before the source ran out
        self._error: BaseException | None = None
        self._capture_thread: threading.Thread | None = None

    @property
    def stats(self):
        return self.session.stats

    def _frames(self):
        return islice(self.source, self.max_frames) if self.max_frames else iter(self.source)

    def __iter__(self) -> Iterator[FrameResult]:
        finished = False
        try:
            yield from (self._realtime() if self.session.realtime else self._deterministic())
            finished = True
        finally:
            self.ended_early = not finished
            self.close()

    def _deterministic(self) -> Iterator[FrameResult]:
        session: ProcessingSession = self.session
        frames = self._frames()
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                return
            self.frames_read += 1
            result = session.process(frame, read_ms=(time.perf_counter() - t0) * 1e3)
            if not result.blank:
                yield result

    def _realtime(self) -> Iterator[FrameResult]:
        session: SubmittingSession = self.session
        capture = threading.Thread(target=self._capture, name="medsam-capture", daemon=True)
        self._capture_thread = capture
        capture.start()
        while True:
            result = session.next_result()
            if result is None:
                break
            yield result
        capture.join(timeout=CAPTURE_JOIN_S)
        if self._error is not None:
            raise self._error

    def _capture(self) -> None:
        session: SubmittingSession = self.session
        start = time.perf_counter()
        try:
            for frame in self._frames():
                if session.closed:
                    return
                if self.pace:
                    delay = start + frame.timestamp - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                frame.captured_at = time.perf_counter()
                self.frames_read += 1
                session.submit(frame)
        except BaseException as e:  # surfaced in the consumer's thread
            if not session.closed:  # a submit racing the caller's close() is not an error
                self._error = e
        finally:
            session.end()

    def close(self) -> None:
        self.session.close()
        capture = self._capture_thread
        if capture is not None and capture is not threading.current_thread():
            # The capture thread may be inside the source's read: closing a cv2.VideoCapture
            # under it is unsafe, and the caller is promised no thread outlives close().
            # A closed session makes it return after the read under way (one frame period).
            capture.join(timeout=CAPTURE_JOIN_S)
        if self.owns_source and hasattr(self.source, "close"):
            self.source.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
