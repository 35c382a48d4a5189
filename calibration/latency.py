"""Encoder latency per precision on onnxruntime's CPU provider, measured in one run.

The machine is shared and noisy, so the precisions take turns round by round (a burst of
someone else's work hits all of them alike) and the median is reported beside p90.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .evaluate import OrtPart


def encoder_latency(files: dict[str, Path], tensor: np.ndarray, rounds: int = 7, warmup: int = 2,
                    threads: int | None = None) -> dict:
    """{precision: {"median_ms", "p90_ms", "vs_fp32"}} for each encoder file."""
    from medsam_edge.engines.onnxruntime_backend import LARGE_INPUT_SIDE

    # All files stay open so that rounds alternate; big ones must not each keep their
    # working memory (three ViT-B encoders ran a 24 GB machine out of memory).
    release = tensor.shape[-1] >= LARGE_INPUT_SIDE
    parts = {p: OrtPart(f, threads, release_memory=release) for p, f in files.items()}
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
