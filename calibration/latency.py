"""Encoder latency per precision and CPU backend, measured in one run.

The machine is shared and noisy, so within a backend the precisions take turns round by
round (a burst of someone else's work hits all of them alike) and the median is reported
beside p90. Backends are measured one after the other, each closed before the next
opens: three ViT-B encoders open at once ran a 24 GB machine out of memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medsam_edge.engines.loaders import open_files


def encoder_latency(files: dict[str, dict[str, tuple[Path, Path]]], tensor: np.ndarray, rounds: int = 7,
                    warmup: int = 2, threads: int | None = None, release_memory: bool = False,
                    plans: dict | None = None) -> dict:
    """files: {backend: {precision: (encoder, decoder)}} -> {"encoder": {"precision@backend":
    {"median_ms", "p90_ms", "speedup_vs_fp32" (same backend), "speedup_vs_onnxruntime_fp32"}}, ...}.
    plans: the BF16 plans OpenVINO runs bf16 with (None: the whole graph at BF16)."""
    out: dict[str, dict] = {}
    for backend, by_precision in files.items():
        # onnxruntime opens the encoder alone; OpenVINO compiles a pair.
        parts = {p: open_files(e, None if backend == "onnxruntime-cpu" else d, backend, p, threads,
                               release_memory=release_memory, plans=plans if p == "bf16" else None)
                 for p, (e, d) in by_precision.items()}
        try:
            for _ in range(warmup):
                for part in parts.values():
                    part.encode(tensor)
            times: dict[str, list[float]] = {p: [] for p in parts}
            for _ in range(rounds):
                for p, part in parts.items():
                    t0 = time.perf_counter()
                    part.encode(tensor)
                    times[p].append((time.perf_counter() - t0) * 1e3)
        finally:
            for part in parts.values():
                part.close()
        base = float(np.median(times["fp32"])) if "fp32" in times else None
        for p, t in times.items():
            med = float(np.median(t))
            out[f"{p}@{backend}"] = {"median_ms": med, "p90_ms": float(np.percentile(t, 90)),
                                     "speedup_vs_fp32": base / med if base else None}
    ref = out.get("fp32@onnxruntime-cpu", {}).get("median_ms")
    for v in out.values():
        v["speedup_vs_onnxruntime_fp32"] = ref / v["median_ms"] if ref else None
    return {"threads": threads or "default", "rounds": rounds, "arena_released_each_call": release_memory,
            "encoder": out}
