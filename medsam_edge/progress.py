"""Progress for long steps, on stderr, so stdout stays clean for data."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator


class Steps:
    """Numbered steps with elapsed time: `[2/5] exporting encoder ... 34.2 s`.

    A step that fails prints `failed` and re-raises; durations are kept in `seconds`
    so callers can record them (the manifest keeps export timings).
    """

    def __init__(self, total: int, stream=None, quiet: bool = False) -> None:
        self.total = total
        self.n = 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.n += 1
        if not self.quiet:
            print(f"[{self.n}/{self.total}] {label} ...", end="", file=self.stream, flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            if not self.quiet:
                print(" failed", file=self.stream, flush=True)
            raise
        dt = time.perf_counter() - t0
        self.seconds[label] = round(dt, 3)
        if not self.quiet:
            print(f" {dt:.1f} s", file=self.stream, flush=True)
