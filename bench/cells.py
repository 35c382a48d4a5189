"""Table cells shared by the bench's Markdown (report, BENCHMARKS.md, the reuse tables)."""

from __future__ import annotations


def number(v, digits: int) -> str:
    """A figure to `digits` decimals; "-" where it was not measured."""
    return "-" if v is None else f"{v:.{digits}f}"


def ratio(sp: dict) -> str:
    """A paired speed-up (bench.timing.paired_ratio) as "median x [p5-p95]"; "-" without samples."""
    return f"{sp['median']:.2f}x [{sp['p5']:.2f}-{sp['p95']:.2f}]" if sp.get("n") else "-"
