"""Encoder latency per precision on onnxruntime's CPU provider, measured in one run.

The machine is shared and noisy, so the precisions take turns round by round (a burst of
someone else's work hits all of them alike) and the median is reported beside p90.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .evaluate import open_part


def encoder_latency(files: dict[str, Path], tensor: np.ndarray, rounds: int = 7, warmup: int = 2,
                    threads: int | None = None) -> dict:
    """{precision: {"median_ms", "p90_ms", "vs_fp32"}} for each encoder file."""
    # All files stay open so that rounds alternate; open_part has big encoders give their
    # working memory back after each call (three ViT-B encoders ran 24 GB out of memory).
    parts = {p: open_part(f, "encoder", threads) for p, f in files.items()}
    release = any(part.releases_memory for part in parts.values())
    for _ in range(warmup):
        for part in parts.values():
            part.encode(tensor)
    times: dict[str, list[float]] = {p: [] for p in parts}
    for _ in range(rounds):
        for p, part in parts.items():
            t0 = time.perf_counter()
            part.encode(tensor)
            times[p].append((time.perf_counter() - t0) * 1e3)
    out = {p: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))} for p, t in times.items()}
    base = out.get("fp32", {}).get("median_ms")
    for p in out:
        out[p]["speedup_vs_fp32"] = base / out[p]["median_ms"] if base else None
    return {"provider": "CPUExecutionProvider", "threads": threads or "default", "rounds": rounds,
            "arena_released_each_call": release, "encoder": out}
