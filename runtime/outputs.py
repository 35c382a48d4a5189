"""A run's output directory: checked before any work, filled by the sinks, closed by a
summary.json that says whether the run is complete.

The rule a user can rely on: `"complete": true` in summary.json, and nothing else, means
the run went through its source and every output holds every frame. summary.json exists
from the start of the run: until the run ends it says `"complete": false` with `stopped`
telling that it is running or was killed. Every exit that can still write (the end, an
error, Ctrl-C, SIGTERM) replaces it with `complete`, `stopped` (why) and `last_frame` (the
last frame every output holds); what the sinks wrote up to there is kept, valid and under
its final name. A run killed outright (SIGKILL, power) keeps the first summary, saying
not complete, and its files under hidden `.partial` names only. A disk that fills up
stops the run with one line; the files are cut back to whole records (runtime.sinks) and,
if even the summary cannot be written, the first one stays: not complete.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from medsam_edge.atomic import write_json, write_text
from medsam_edge.errors import InputError

log = logging.getLogger("medsam_edge.run")

SUMMARY = "summary.json"
# What a run writes; an --out holding any of them (or their .partial names, left by a
# killed run) holds an earlier run.
RUN_FILES = ("summary.json", "frames.jsonl", "overlay.mp4", "masks.npz", "masks", "segmentation.dcm")
RUNNING = ("not finished: the run is still going, or its process was killed before it could say how it "
           "ended (SIGKILL, a crash, power)")
WRITE_TEST_BYTES = 64 * 1024  # written and removed in --out before the run: a full disk shows here
# The first summary is padded to this size, so that on a disk full by the end a short
# final summary can still be written over it in place, in blocks the file already has.
FIRST_SUMMARY_BYTES = 2048


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run ends as after Ctrl-C."""


def _leftovers(out: Path) -> list[Path]:
    """What an earlier run wrote in `out`: final names and the .partial names of a killed one."""
    from medsam_edge.runtime.sinks import partial_path

    found = []
    for name in RUN_FILES:
        path = out / name
        for p in (path, partial_path(path), partial_path(path, keep_suffix=True)):
            if p.exists() and p not in found:
                found.append(p)
    return found


class RunOutputs:
    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.sinks = None
        self.summary: dict = {}
        self._check(overwrite)

    def _check(self, overwrite: bool) -> None:
        from medsam_edge.runtime.sinks import MIN_FREE_BYTES, free_bytes

        out = self.out
        if "\0" in str(out):
            raise InputError(f"--out {str(out)!r}: not a usable path (it holds a NUL character)")
        try:
            for parent in [out, *out.parents]:
                if parent.exists() and not parent.is_dir():
                    where = "is a file" if parent == out else f"is under {parent}, which is a file"
                    raise InputError(f"--out {out}: {where}; give a directory")
                if parent.exists():
                    break
            earlier = _leftovers(out) if out.is_dir() else []
        except (ValueError, OSError) as e:  # a NUL in the path, a name too long, a dead mount
            raise InputError(f"--out {out}: not a usable path ({getattr(e, 'strerror', None) or e})") from None
        if earlier and not overwrite:
            names = ", ".join(p.name for p in earlier)
            raise InputError(f"--out {out} holds an earlier run ({names}); pass --overwrite or choose another --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
            free = free_bytes(out)
            if free is not None and free < MIN_FREE_BYTES:
                raise OSError(errno.ENOSPC, f"{free // 1024} KiB free")
            test_file = out / f".medsam-edge-write-test.{os.getpid()}"
            try:
                with open(test_file, "wb") as f:
                    f.write(b"\0" * WRITE_TEST_BYTES)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                test_file.unlink(missing_ok=True)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise InputError(f"--out {out}: the disk is full ({e.strerror}); free space or choose another "
                                 "--out") from None
            raise InputError(f"--out {out}: cannot write there ({e.strerror or e}); choose another directory") from None
        if earlier:
            # The summary goes first: a directory half-way through being overwritten must
            # never look like a complete run.
            earlier.sort(key=lambda p: p.name != SUMMARY)
            for path in earlier:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)

    def open(self, *, video: bool, masks: str | None, fps: float | None, extra=()) -> None:
        """The first summary.json (not complete: running), then the sinks."""
        from medsam_edge.runtime.sinks import MultiSink, open_sinks

        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.summary = {"complete": False, "stopped": RUNNING, "last_frame": None, "started": self.started}
        text = json.dumps(self.summary, indent=2)
        try:
            write_text(self.out / SUMMARY, text + " " * max(0, FIRST_SUMMARY_BYTES - len(text) - 1) + "\n")
            sinks = open_sinks(self.out, video=video, masks=masks, jsonl=True, fps=fps)
        except OSError as e:
            for sink in extra:
                sink.close()
            raise _disk_error(e, self.out) from None
        self.sinks = MultiSink([*sinks.sinks, *extra]) if extra else sinks

    def run(self, stream, summary: dict, total: int | None = None, live: bool = False, pixel_calibration=None) -> dict:
        """Write every result of `stream`; summary.json on the way out, whatever the way.

        Results arrive measured (runtime.measure.Measured, the step before the outputs):
        this only writes them, and sums their sizes up per track for the summary, which
        says where pixel_calibration (runtime.spacing.PixelCalibration, or None: pixels
        only) came from."""
        from medsam_edge.runtime.measure import TrackStatistics

        tracks = TrackStatistics()
        latencies, writes = [], []
        last = None
        stopped = None
        t_start = time.perf_counter()
        bar = _progress(total, live)
        with StopRequest() as stop:
            try:
                for result in stream:
                    tracks.add_result(result)
                    t0 = time.perf_counter()
                    self.sinks.write(result)
                    writes.append((time.perf_counter() - t0) * 1e3)
                    last = result.frame.index
                    latencies.append(result.latency_ms.get("capture_to_mask", result.latency_ms.get("total", 0.0)))
                    bar.update(1)
                    elapsed = time.perf_counter() - t_start
                    bar.set_postfix_str(f"{len(latencies) / elapsed:.1f} fps, {latencies[-1]:.0f} ms, {result.reuse}",
                                        refresh=False)
                    stop.check()
            except KeyboardInterrupt as e:
                stopped = str(e) or "interrupted (Ctrl-C)"
                raise
            except InputError as e:
                stopped = f"error: {e}"
                raise
            except OSError as e:
                stopped = f"error: {e}"
                raise _disk_error(e, self.out) from None
            except BaseException as e:
                stopped = f"error: {type(e).__name__}: {e}"
                raise
            finally:
                bar.close()
                stream.close()
                close_error = self._close_sinks()
                stopped = "; ".join(s for s in (stopped, close_error) if s) or None
                wall = time.perf_counter() - t_start
                self.summary = {
                    "complete": stopped is None and not stream.ended_early,
                    "stopped": stopped,
                    "last_frame": last,
                    "started": getattr(self, "started", None),
                    **summary,
                    "seconds": round(wall, 3),
                    "fps": round(len(latencies) / wall, 3) if wall > 0 else 0.0,
                    **stream.stats.summary(getattr(stream.source, "skipped", 0)),
                    "source_truncated": getattr(stream.source, "truncated", None),
                    "measurements": tracks.summary(pixel_calibration),
                    "latency_ms": percentiles(latencies),
                    "write_ms": percentiles(writes),
                    "outputs": [str(p) for p in self.sinks.outputs],
                }
                self._write_summary()
        if close_error:
            raise InputError(close_error)
        return self.summary

    def _close_sinks(self) -> str | None:
        try:
            self.sinks.close()
        except InputError as e:
            return f"error: {e}"
        except OSError as e:
            return f"error: {_disk_error(e, self.out)}"
        return None

    def _write_summary(self) -> None:
        try:
            write_json(self.out / SUMMARY, self.summary)
            return
        except OSError as e:
            log.error("summary.json: %s", _disk_error(e, self.out))
        # Most likely a full disk: the three fields that decide, over the first summary.
        short = json.dumps({k: self.summary.get(k) for k in ("complete", "stopped", "last_frame", "started")})
        try:
            with open(self.out / SUMMARY, "r+b") as f:
                data = short.encode("utf-8")[: FIRST_SUMMARY_BYTES - 1] + b"\n"
                if len(data) <= os.fstat(f.fileno()).st_size:
                    f.write(data)
                    f.truncate(len(data))
        except OSError:
            pass  # the first summary stays: not complete


def percentiles(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {}
    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)} | {"mean": round(float(a.mean()), 2)}


def _disk_error(e: OSError, out: Path) -> InputError:
    if e.errno == errno.ENOSPC:
        return InputError(f"--out {out}: the disk is full; free space or choose another --out "
                          "(what was written is kept; summary.json says the run is not complete)")
    return InputError(f"--out {out}: cannot write ({e.strerror or e})")


class StopRequest:
    """Ctrl-C and SIGTERM while a run writes: the first one stops the run after the frame
    it is on, the second at once. Raised wherever the signal lands, the interrupt could
    leave a stream worker's queue or lock half-used and the close waiting on it (a run on
    a loaded CI machine did not exit two minutes after Ctrl-C); between two frames nothing
    is in flight but what the stream's close ends."""

    def __init__(self) -> None:
        self.error: KeyboardInterrupt | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handler(self, signum, frame) -> None:
        error = Terminated("stopped by SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()
        if self.error is not None:
            raise error
        self.error = error
        log.info("%s: stopping after this frame (again to stop at once)",
                 "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def terminate_as_interrupt():
    """SIGTERM (a service manager stopping the cart's job) ends the run like Ctrl-C, so the
    summary is written; returns a function that restores the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Terminated("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _progress(total: int | None, live: bool):
    from tqdm import tqdm

    return tqdm(total=None if live else total, unit="frame", dynamic_ncols=True, leave=True,
                desc="live" if live else "frames")
