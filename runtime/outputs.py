"""A run's output directory: checked before any work, filled by the sinks, closed by a
summary.json that says whether the run is complete, on every exit path that can write.

The rule a user can rely on: `"complete": true` in summary.json, and nothing else, means
the run went through its source. Otherwise summary.json says why it stopped
(`stopped`) and the last frame written (`last_frame`); every file the sinks had written
is kept and valid up to that frame. A process killed outright leaves no summary.json:
by the same rule, not complete.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from medsam_edge.atomic import write_json
from medsam_edge.errors import InputError

log = logging.getLogger("medsam_edge.run")

SUMMARY = "summary.json"
# What a run writes; an --out holding any of them holds an earlier run.
RUN_FILES = ("summary.json", "frames.jsonl", "overlay.mp4", "masks.npz", "masks", "segmentation.dcm")


class RunOutputs:
    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.sinks = None
        self.summary: dict = {}
        self._check(overwrite)

    def _check(self, overwrite: bool) -> None:
        out = self.out
        for parent in [out, *out.parents]:
            if parent.exists() and not parent.is_dir():
                where = "is a file" if parent == out else f"is under {parent}, which is a file"
                raise InputError(f"--out {out}: {where}; give a directory")
            if parent.exists():
                break
        earlier = [name for name in RUN_FILES if (out / name).exists()]
        if earlier and not overwrite:
            raise InputError(f"--out {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite "
                             "or choose another --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".medsam-edge-write-test.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise InputError(f"--out {out}: cannot write there ({e.strerror or e}); choose another directory") from None
        if earlier:
            # The summary goes first: a directory half-way through being overwritten must
            # never look like a complete run.
            for name in ("summary.json", *RUN_FILES):
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()

    def open(self, *, video: bool, masks: str | None, fps: float | None, extra=()) -> None:
        from medsam_edge.runtime.sinks import MultiSink, open_sinks

        sinks = open_sinks(self.out, video=video, masks=masks, jsonl=True, fps=fps)
        self.sinks = MultiSink([*sinks.sinks, *extra]) if extra else sinks

    def run(self, stream, summary: dict, total: int | None = None, live: bool = False, calibration=None) -> dict:
        """Write every result of `stream`; summary.json on the way out, whatever the way.

        calibration: runtime.spacing.Calibration (or None: pixels only): each record gains
        its masks' sizes in mm, and the summary per-track statistics."""
        from medsam_edge.runtime.spacing import TrackStatistics, measurements

        tracks = TrackStatistics()
        latencies, writes = [], []
        last = None
        stopped = None
        t_start = time.perf_counter()
        bar = _progress(total, live)
        restore = _terminate_as_interrupt()
        try:
            for result in stream:
                result.measurements = measurements(result.masks, calibration)
                tracks.add(result.record())
                t0 = time.perf_counter()
                self.sinks.write(result)
                writes.append((time.perf_counter() - t0) * 1e3)
                last = result.frame.index
                latencies.append(result.latency_ms.get("capture_to_mask", result.latency_ms.get("total", 0.0)))
                bar.update(1)
                elapsed = time.perf_counter() - t_start
                bar.set_postfix_str(f"{len(latencies) / elapsed:.1f} fps, {latencies[-1]:.0f} ms, {result.reuse}",
                                    refresh=False)
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
            restore()
            bar.close()
            stream.close()
            close_error = self._close_sinks()
            stopped = stopped or close_error
            wall = time.perf_counter() - t_start
            self.summary = {
                "complete": stopped is None and not stream.ended_early,
                "stopped": stopped,
                "last_frame": last,
                **summary,
                "seconds": round(wall, 3),
                "fps": round(len(latencies) / wall, 3) if wall > 0 else 0.0,
                **stream.stats.summary(getattr(stream.source, "skipped", 0)),
                "measurements": tracks.summary(calibration),
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
        except OSError as e:
            log.error("%s", _disk_error(e, self.out))


def percentiles(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {}
    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)} | {"mean": round(float(a.mean()), 2)}


def _disk_error(e: OSError, out: Path) -> InputError:
    if e.errno == errno.ENOSPC:
        return InputError(f"--out {out}: the disk is full; free space or choose another --out "
                          "(what was written so far is kept and summary.json says where it stopped)")
    return InputError(f"--out {out}: cannot write ({e.strerror or e})")


def _terminate_as_interrupt():
    """SIGTERM (a service manager stopping the cart's job) ends the run like Ctrl-C, so the
    summary is written; returns a function that restores the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _progress(total: int | None, live: bool):
    from tqdm import tqdm

    return tqdm(total=None if live else total, unit="frame", dynamic_ncols=True, leave=True,
                desc="live" if live else "frames")
