"""Record: the live answers of a span written as `run` writes them, by the same output rule.

RunOutputs (runtime.outputs) does the writing in a thread of its own, iterating a feed
the engine fills: summary.json says `"complete": true` exactly when the recording was
stopped (by the user, the source's end or the controlling page leaving) and every output
holds every frame fed; a server stopped mid-recording leaves it marked incomplete. A
writer slower than the stream drops the oldest waiting answers, counted in the summary
as `dropped`, rather than holding up the picture.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
from pathlib import Path

from medsam_edge.errors import InputError

log = logging.getLogger("medsam_edge.view")

WAITING = 300  # answers waiting for the writer at most (10 s at 30 fps)


class Feed:
    """What RunOutputs.run iterates: results until stop(), and the stream's counters."""

    def __init__(self, source) -> None:
        from medsam_edge.runtime.session import Stats

        self.source = source
        self.stats = Stats()
        self.ended_early = False
        self._queue: queue.Queue = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()

    def put(self, result) -> None:
        with self._lock:
            if self._waiting >= WAITING:
                self.stats.dropped += 1
                return
            self._waiting += 1
        self._queue.put(result)

    def stop(self, interrupted: bool = False) -> None:
        self.ended_early = interrupted
        self._queue.put(None)

    def __iter__(self):
        while True:
            result = self._queue.get()
            if result is None:
                return
            with self._lock:
                self._waiting -= 1
            self.stats.frames += 1
            self.stats.embeddings[result.reuse] += 1
            yield result

    def close(self) -> None:
        pass


class Recording:
    def __init__(self, out: Path, source, summary: dict, fps: float | None, pixel_calibration, extra_sinks) -> None:
        from medsam_edge.runtime.outputs import RunOutputs

        self.out = out
        self.outputs = RunOutputs(out)
        self.feed = Feed(source)
        self.ended: str | None = None
        self.summary: dict | None = None
        self.error: str | None = None
        # RunOutputs spreads this dict into summary.json at the end: how the span ended goes in.
        self._described = summary
        self.outputs.open(video=True, masks="npz", fps=fps, extra=extra_sinks)
        self._thread = threading.Thread(target=self._write, args=(summary, pixel_calibration), name="medsam-record",
                                        daemon=True)
        self._thread.start()

    def _write(self, summary: dict, pixel_calibration) -> None:
        try:
            self.summary = self.outputs.run(self.feed, summary, live=True, pixel_calibration=pixel_calibration)
        except BaseException as e:  # the summary says it; the viewer goes on
            self.error = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            self.summary = self.outputs.summary
            log.error("recording %s: %s", self.out, self.error)

    def stop(self, why: str, interrupted: bool = False, timeout: float | None = 60.0) -> dict | None:
        """Finish writing (waits for the writer); the summary, or None if it is still writing."""
        self.ended = why
        self._described["recording_ended"] = why
        self.feed.stop(interrupted)
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.summary

    def describe(self) -> dict:
        s = self.summary or {}
        return {"folder": self.out.name, "frames": self.feed.stats.frames, "ended": self.ended,
                "complete": s.get("complete") if self.summary else None, "error": self.error}


def new_folder(parent: Path) -> Path:
    """A folder for one recording under `parent`, named by the time it starts."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = parent / (stamp if n == 0 else f"{stamp}-{n}")
        if not folder.exists():
            return folder
    raise InputError(f"--record-dir {parent}: too many recordings named {stamp}; choose another folder")
