"""`--precision auto`: the fastest precision and backend here whose fidelity the model
directory's report says meets its target on held-out frames, and why.

Inputs, each passed in or read here, never assumed:
- the CPU's instruction-set flags (/proc/cpuinfo on Linux): AVX-512 BF16 or AMX-BF16 make
  OpenVINO BF16 a candidate; a CPU with AVX2 only runs FP32;
- the backends installed and usable here (engines.select.find_backends's, passed by the caller);
- the fidelity report (fidelity.json, written by `medsam-edge calibrate`): the bf16 row on
  openvino-cpu must meet its target, measured with the BF16 plan the manifest holds now.
Order: BF16 on OpenVINO (LiteMedSAM's encoder with its plan about 1.9x OpenVINO FP32;
docs/decisions.md#bf16-plan-and-precision-auto), else FP32 on the backend "auto" picks.
INT8 is never picked: its target (Dice mean 0.97) is looser than the 0.995 asked of what
runs by default. GPUs keep FP32: the report measures CPU arithmetic only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

AUTO = "auto"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
GPU_BACKENDS = ("tensorrt", "onnxruntime-trt", "onnxruntime-cuda")
BF16_BACKEND = "openvino-cpu"


@dataclass(frozen=True)
class Choice:
    """What auto picked: backend (a name, or "auto" for select's own order), precision, why."""

    backend: str
    precision: str
    reason: str


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's flags as the kernel lists them; None where they cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def _flags_words(flags: frozenset[str] | None) -> str:
    if flags is None:
        return "CPU flags unreadable here"
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "amx_int8") if f in flags]
    return "CPU flags: " + (", ".join(shown) or "none of avx2/avx512/amx")


def report_row(md, precision: str) -> tuple[dict | None, str]:
    """The fidelity report's row for `precision`, or None and why there is none."""
    rec = md.manifest.get("precision") or {}
    path = md.path / (rec.get("report") or "fidelity.json")
    if not path.is_file():
        return None, f"no fidelity report in {md.path} (run `medsam-edge calibrate {md.path} --precision bf16`)"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path}: unreadable ({e}); run `medsam-edge calibrate` again"
    row = (report.get("precisions") or {}).get(precision) if isinstance(report, dict) else None
    if not isinstance(row, dict):
        return None, (f"{path.name} has no {precision} row "
                      f"(run `medsam-edge calibrate {md.path} --precision {precision}`)")
    return row, ""


def bf16_verdict(md) -> tuple[bool, str]:
    """(True, figures) when the report says bf16 on OpenVINO meets its target with the plan the
    manifest holds now; else False and why."""
    from medsam_edge.engines.openvino_segments import plan_id, stored_plans

    row, why = report_row(md, "bf16")
    if row is None:
        return False, why
    ran = (row.get("backends") or {}).get(BF16_BACKEND) or {}
    if "dice" not in ran:
        return False, f"the report's bf16 row was not measured on {BF16_BACKEND} ({ran.get('not_run', 'no figures')})"
    now = plan_id(stored_plans(md.manifest))
    if row.get("plan_id") != now:
        return False, ("the report's bf16 figures were measured with another BF16 plan than the manifest's; "
                       f"run `medsam-edge calibrate {md.path} --precision bf16` again")
    d, target = ran["dice"], row.get("target") or {}
    figures = ", ".join(f"Dice {k} {d.get(k):.4f} vs {v}" for k, v in target.items() if d.get(k) is not None)
    blocks = row.get("fp32_blocks", {}).get("encoder")
    plan = f" with {blocks} encoder blocks FP32" if blocks else " (whole graph at BF16)"
    if not ran.get("meets_target"):
        return False, f"bf16 on {BF16_BACKEND}{plan} misses its target on held-out frames ({figures})"
    return True, f"bf16 on {BF16_BACKEND}{plan} meets its target on held-out frames ({figures})"


def choose(md, available: set[str], backend: str = AUTO,
           flags: frozenset[str] | None | str = "detect") -> Choice:
    """The precision (and backend) `--precision auto` runs on this machine.

    backend: the user's --backend ("auto", or a name: then only precisions it runs count).
    available: the backends usable here (engines.select.find_backends's).
    flags: the CPU's flags ("detect": read them here; None: unreadable)."""
    if flags == "detect":
        flags = cpu_flags()
    words = _flags_words(flags)  # type: ignore[arg-type]
    fp32 = "fp32"
    if backend.startswith("triton://"):
        return Choice(backend, fp32, "a Triton server runs the precision its repository was written with; fp32")
    gpu = [b for b in GPU_BACKENDS if b in available]
    if backend == AUTO and gpu:
        return Choice(AUTO, fp32, f"{gpu[0]} here: a GPU keeps FP32 under auto (the fidelity report measures CPU "
                                  "arithmetic; choose --precision fp16 or int8 to run calibrated files)")
    if backend not in (AUTO, BF16_BACKEND):
        return Choice(backend, fp32, f"--backend {backend}: bf16 runs on {BF16_BACKEND} only; fp32")
    bf16_cpu = flags is not None and any(f in flags for f in BF16_FLAGS)  # type: ignore[operator]
    if not bf16_cpu:
        return Choice(backend, fp32, f"{words}: no AVX-512 BF16 or AMX-BF16, so no BF16 arithmetic; fp32")
    if BF16_BACKEND not in available:
        return Choice(backend, fp32, f"{words}, but {BF16_BACKEND} is not usable here "
                                     "(pip install 'medsam-edge[openvino]'); fp32")
    from medsam_edge.engines.openvino_backend import precision_support

    ok, why = precision_support("bf16")
    if not ok:
        return Choice(backend, fp32, f"{words}, but OpenVINO says: {why}")
    ok, why = bf16_verdict(md)
    if not ok:
        return Choice(backend, fp32, f"{words}; {why}; fp32")
    return Choice(BF16_BACKEND, "bf16", f"{words}; {why}")
