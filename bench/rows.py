"""Which rows a benchmark runs, and opening each.

A row is a backend family at a precision: `onnxruntime-cpu-fp32`, `onnxruntime-cpu-int8`,
`tensorrt-fp16`, ... The reference (PyTorch FP32 eager, MedSAM's path) is always
row 0: every ratio and every fidelity figure is against it. Reduced-precision rows
exist where calibration wrote `encoder.<precision>.onnx` into the model directory;
families that cannot run here are listed as skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from medsam_edge.contract import PRECISIONS as CONTRACT_PRECISIONS
from medsam_edge.errors import InputError

REFERENCE = "reference"
# The PyTorch fast path (FP16 autocast, SDPA) is CUDA-only; the engines families follow.
TORCH_FAST = "torch-cuda"
ENGINE_FAMILIES = ("onnxruntime-cpu", "openvino-cpu", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")
FAMILIES = (TORCH_FAST, *ENGINE_FAMILIES)
# The contract's precisions: int8dyn is onnxruntime's dynamic quantization (CPU only), bf16
# OpenVINO's inference precision on the FP32 files.
PRECISIONS = tuple(CONTRACT_PRECISIONS)


@dataclass
class RowSpec:
    name: str
    family: str
    precision: str
    opener: Callable | None = None  # () -> Runner
    skip_reason: str = ""
    meta: dict = field(default_factory=dict)


def known_names() -> list[str]:
    return ["all", REFERENCE, *FAMILIES, *(f"{f}-{p}" for f in ENGINE_FAMILIES for p in PRECISIONS)]


def parse(tokens: list[str] | None) -> list[str] | None:
    """--backends values -> validated names (None: every row); an unknown name is an InputError."""
    if not tokens:
        return None
    names = [t.strip() for tok in tokens for t in tok.split(",") if t.strip()]
    unknown = [n for n in names if n not in known_names()]
    if unknown:
        raise InputError(f"unknown backend {', '.join(repr(n) for n in unknown)}; choose all, a family "
                         f"({', '.join(FAMILIES)}) or FAMILY-PRECISION with {'/'.join(PRECISIONS)}")
    return None if "all" in names else names


def plan(md, wanted: list[str] | None, checkpoint=None, threads: int | None = None) -> list[RowSpec]:
    """The reference first, then every requested row (runnable or skipped with its reason)."""
    from medsam_edge.engines.select import find_backends

    found = {a.name: a for a in find_backends()}
    present = [p for p in PRECISIONS if md.onnx("encoder", p).is_file()]

    def runs(family: str, precision: str) -> bool:
        return family.split("-")[0] in CONTRACT_PRECISIONS[precision].runs_on
    rows = [RowSpec(f"{REFERENCE}", "torch", "fp32", lambda: _open_reference(md, checkpoint, threads))]

    def asked(family: str, precision: str) -> bool:
        return wanted is None or family in wanted or f"{family}-{precision}" in wanted

    if asked(TORCH_FAST, "fp16"):
        reason = _cuda_reason()
        rows.append(RowSpec(f"{TORCH_FAST}-fp16", TORCH_FAST, "fp16",
                            None if reason else (lambda: _open_torch_fast(md, checkpoint)), reason))
    for family in ENGINE_FAMILIES:
        for precision in PRECISIONS:
            if not asked(family, precision) or not runs(family, precision):
                continue
            explicit = wanted is not None and f"{family}-{precision}" in wanted
            if precision not in present:
                if explicit:  # only say so when asked by name; otherwise absent files are not rows
                    rows.append(RowSpec(f"{family}-{precision}", family, precision, None,
                                        f"no {md.onnx('encoder', precision).name} in {md.path}; run `medsam-edge calibrate`"))
                continue
            avail = found[family]
            rows.append(RowSpec(f"{family}-{precision}", family, precision,
                                (lambda f=family, p=precision: _open_engine(md, f, p, threads)) if avail.available
                                else None,
                                "" if avail.available else avail.reason))
    return rows


def _open_reference(md, checkpoint, threads: int | None = None):
    from medsam_edge.bench.runners import reference_runner

    return reference_runner(md, checkpoint, threads)


def _open_engine(md, family: str, precision: str, threads: int | None = None):
    from medsam_edge.bench.runners import backend_runner
    from medsam_edge.engines.onnxruntime_backend import LARGE_INPUT_SIDE
    from medsam_edge.engines.select import open_backend

    # Every row stays open for the round-robin; big encoders give their memory back.
    release = md.preprocess.size >= LARGE_INPUT_SIDE
    return backend_runner(f"{family}-{precision}", open_backend(md, family, precision, threads=threads,
                                                                 release_memory=release), md)


def _open_torch_fast(md, checkpoint):
    from medsam_edge.bench.runners import backend_runner
    from medsam_edge.export.torch_backend import TorchBackend

    return backend_runner(f"{TORCH_FAST}-fp16", TorchBackend(md, checkpoint, device="cuda", fast=True), md)


def _cuda_reason() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (the fast path is CUDA-only)"
    return ""
