"""FP16 mixed precision in the ONNX: FP32 inputs/outputs, fragile nodes kept FP32 by measurement.

Two measured steps, no guessed op lists:
1. Range: every float tensor's largest |value| on real calibration frames (FP32 run).
   A node whose inputs or outputs come within RANGE_HEADROOM of FP16's limit stays FP32
   (SAM's hand-written LayerNorm2d squares its centred input: that Pow overflows).
2. Error: the converted model is judged on real frames against the FP32 reference. While
   it misses the target, each remaining arithmetic op type is tried in FP32 and the one
   that lowers the error most is kept there (greedy), so rounding-sensitive ops (e.g. the
   decoder's sin/cos positional encoding) are found by their effect, not by name.
Conversion is onnxconverter-common's convert_float_to_float16 with keep_io_types=True.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import onnx

from medsam_edge.atomic import atomic_path

from .graph import op_counts, value_ranges

FP16_MAX = 65504.0
# Calibration frames are a sample: leave 8x room for brighter or busier unseen frames.
RANGE_HEADROOM = 8.0
# Ops that only move or pick values: FP16 storage is exact for them once their neighbours
# are decided, so they are never worth an error trial.
_MOVERS = {"Reshape", "Transpose", "Slice", "Split", "Concat", "Gather", "Shape", "Unsqueeze", "Squeeze",
           "Expand", "Pad", "Identity", "Flatten", "Constant", "ConstantOfShape", "ScatterElements", "Cast"}
MAX_ROUNDS = 4


@dataclass
class Verdict:
    """A judge's answer for one candidate file: the error to minimise and whether it passes."""

    loss: float
    passed: bool
    figures: dict = field(default_factory=dict)


Judge = Callable[[Path], Verdict]


def convert(model: onnx.ModelProto, keep_fp32: Iterable[str]) -> onnx.ModelProto:
    """FP16 copy of `model` with FP32 graph I/O and the named nodes left in FP32."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # One warning per weight too small for FP16: the count goes in the record instead.
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(
            copy.deepcopy(model),
            keep_io_types=True,
            node_block_list=sorted(keep_fp32),
            # The library's default clamps weights to 1e4; FP16 itself reaches 65504.
            max_finite_val=FP16_MAX,
        )


def range_fragile(model: onnx.ModelProto, peaks: dict[str, float]) -> dict[str, float]:
    """Nodes touching a tensor whose measured peak is too close to FP16's limit -> that peak."""
    limit = FP16_MAX / RANGE_HEADROOM
    out = {}
    for n in model.graph.node:
        peak = max([peaks.get(t, 0.0) for t in list(n.input) + list(n.output)] or [0.0])
        if peak > limit:
            out[n.name] = peak
    return out


def write_fp16(src: Path, dest: Path, feeds: list[dict], judge: Judge | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict:
    """Write the FP16 model for `src` to `dest` (atomically); returns what was decided and why."""
    model = onnx.load(str(src))
    name_nodes(model)
    peaks = value_ranges(src, feeds)
    fragile = range_fragile(model, peaks)
    keep = dict.fromkeys(fragile, "range")
    log(f"{len(fragile)} node(s) reach |x| > {FP16_MAX / RANGE_HEADROOM:g} on real frames: kept FP32")
    record: dict = {
        "tool": _tool(),
        "range_limit": FP16_MAX / RANGE_HEADROOM,
        "frames_for_ranges": len(feeds),
        "trials": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"

        def judged(nodes) -> Verdict:
            onnx.save(convert(model, nodes), str(trial))
            return judge(trial)

        if judge is not None:
            # The all-FP16 baseline: the measured reason any node is kept FP32 at all.
            base = judged([])
            record["all_fp16"] = base.figures
            log(f"all FP16: loss {base.loss:.3g}, Dice mean {_dice(base)}")
            v = judged(keep) if keep else base
            if keep:
                log(f"range-kept nodes FP32: loss {v.loss:.3g}, Dice mean {_dice(v)}")
            record["trials"].append({"fp32_op_types": [], "loss": v.loss, "passed": v.passed})
            for rnd in range(MAX_ROUNDS):
                if v.passed:
                    break
                best = None
                for op in _candidates(model, keep):
                    extra = [n.name for n in model.graph.node if n.op_type == op and n.name not in keep]
                    t = judged(list(keep) + extra)
                    record["trials"].append({"round": rnd + 1, "fp32_op_type": op, "loss": t.loss, "passed": t.passed})
                    log(f"round {rnd + 1}: {op} in FP32 -> loss {t.loss:.3g}")
                    if best is None or t.loss < best[1].loss:
                        best = (extra, t, op)
                if best is None or best[1].loss >= v.loss:
                    break  # nothing left helps: stop rather than drift towards all-FP32
                keep.update(dict.fromkeys(best[0], f"error ({best[2]})"))
                v = best[1]
            record["figures"] = v.figures
            record["passed"] = v.passed
    out = convert(model, keep)
    with atomic_path(dest) as tmp_path:
        onnx.save(out, str(tmp_path))
    ops = {n.name: n.op_type for n in model.graph.node}
    record["fp32_nodes"] = [
        {"name": k, "op": ops[k], "why": why, **({"peak": round(fragile[k], 1)} if k in fragile else {})}
        for k, why in keep.items()
    ]
    record["nodes"] = {"total": len(model.graph.node), "fp32": len(keep)}
    return record


def _dice(v: Verdict) -> str:
    d = (v.figures.get("dice") or {}).get("mean")
    return "n/a" if d is None else f"{d:.4f}"


def _candidates(model: onnx.ModelProto, keep: dict) -> list[str]:
    left = {n.op_type for n in model.graph.node if n.name not in keep}
    return sorted(op for op in op_counts(model) if op in left and op not in _MOVERS)


def name_nodes(model: onnx.ModelProto) -> None:
    # The block list is by node name; an exporter may leave some unnamed.
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def _tool() -> str:
    from importlib import metadata

    return f"onnxconverter-common {metadata.version('onnxconverter-common')} convert_float_to_float16(keep_io_types=True)"
