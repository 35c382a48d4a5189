"""Statistics with their spread, and host-memory peaks per row.

Latency figures are never single numbers: every summary carries the sample count and
the spread (standard deviation, interquartile range, min, max) so two runs can be
compared honestly.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

PERCENTILES = (50, 95, 99)


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """p50/p95/p99/mean with spread; an empty list gives {"n": 0}."""
    a = np.asarray(list(samples_ms), np.float64)
    if a.size == 0:
        return {"n": 0}
    q25, q75 = np.percentile(a, [25, 75])
    out = {"n": int(a.size)}
    out.update({f"p{q}": _r(np.percentile(a, q)) for q in PERCENTILES})
    out.update(mean=_r(a.mean()), std=_r(a.std(ddof=1) if a.size > 1 else 0.0), iqr=_r(q75 - q25),
               min=_r(a.min()), max=_r(a.max()))
    return out


def paired_ratio(ref_ms: Sequence[float], row_ms: Sequence[float]) -> dict:
    """Speed-up ref/row over samples taken on the same frame and run, with its spread.

    Pairing makes drift (thermal, another process) cancel: both were measured within
    the same round of the round-robin.
    """
    r = np.asarray(ref_ms, np.float64)
    x = np.asarray(row_ms, np.float64)
    if r.size == 0 or r.size != x.size or np.any(x <= 0):
        return {"n": 0}
    ratio = r / x
    return {"n": int(ratio.size), "median": _r(np.median(ratio), 3), "p5": _r(np.percentile(ratio, 5), 3),
            "p95": _r(np.percentile(ratio, 95), 3)}


def _r(v: float, digits: int = 3) -> float:
    return round(float(v), digits)


class MemorySampler:
    """Samples this process's RSS in a thread; keeps the peak per label.

    One process runs every row, so the process peak alone cannot tell rows apart; the
    label says which row was running when a sample was taken. Inference libraries
    release the GIL while they compute, so the sampler keeps ticking during a call.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process(os.getpid())
        self.interval_s = interval_s
        self.label: str | None = None
        self.peaks: dict[str, int] = {}
        self.baseline = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._note(self.rss())
            time.sleep(self.interval_s)

    def _note(self, rss: int) -> None:
        label = self.label
        if label is not None and rss > self.peaks.get(label, 0):
            self.peaks[label] = rss

    @contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        previous, self.label = self.label, label
        self._note(self.rss())
        try:
            yield
        finally:
            self._note(self.rss())
            self.label = previous

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def process_peak_rss_mb() -> float:
    """The kernel's high-water mark for this process (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def mb(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**20, 1)
