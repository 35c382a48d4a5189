"""INT8 in the ONNX: Q/DQ nodes the way TensorRT reads them, calibrated on real frames.

- onnxruntime.quantization.quantize_static, QuantFormat.QDQ: symmetric INT8 activations
  and weights (zero points 0), per-channel weight scales, biases left float, and only the
  inputs of Conv/MatMul/Gemm quantized: LayerNorm, Softmax and GELU stay in float, as
  TensorRT's explicit-quantization rules expect.
- Calibration ranges for every method come from one sweep over the frames in bounded
  memory (ranges.py) and are kept as onnxruntime calibration caches, which every trial of
  the sensitivity search reuses.
- Sensitivity: each quantizable node is quantized alone and the damage to the embedding
  measured (in groups first when there are many), then the most damaging nodes are left in
  float, as few as the judge on real frames allows (doubling, then bisection).
- A CPU-only variant, quantize_dynamic (MatMulInteger with per-call activation ranges),
  is offered separately: it is what onnxruntime's CPU kernels are fast at.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import onnx

from medsam_edge.atomic import atomic_path

from .fp16 import Verdict
from . import ranges
from .graph import constant_names

QUANT_OPS = ("Conv", "MatMul", "Gemm")
METHODS = ("minmax", "entropy", "percentile")
# Memory for calibration tensors fetched at once (the machine has 24 GB, shared).
CALIB_BYTES = 2 << 30
# A full one-node-at-a-time pass above this many nodes would take too long on a CPU.
MAX_TRIALS = 96
_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "CalibTensorRangeSymmetric": True,
    # TensorRT fuses float bias itself; an INT32 bias DQ is not part of its Q/DQ rules.
    "QuantizeBias": False,
    "CalibPercentile": 99.99,
}
Probe = Callable[[Path], float]


def quantizable(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul/Gemm nodes in graph order."""
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS]


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls of two activations (attention scores and context), for the record."""
    consts = constant_names(model)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not set(n.input) & consts]


def calibrate(src: Path, reader, methods: Sequence[str], caches: dict[str, Path], threads: int | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict:
    """Ranges for every method in `methods`, in one sweep over the reader's frames.

    Bounded memory (see ranges.py): onnxruntime's own calibrator holds whole frames of
    tensors and ran the full ViT-B out of memory.
    """
    return ranges.write_caches(src, reader, methods, caches, QUANT_OPS, CALIB_BYTES,
                               percentile=_OPTIONS["CalibPercentile"], threads=threads, log=log)


def quantize(src: Path, dest: Path, method: str, cache: Path, exclude: Sequence[str] = ()) -> None:
    """Write the Q/DQ model for `src` to `dest` from the ranges `calibrate` wrote to `cache`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not Path(cache).is_file():
        raise FileNotFoundError(f"{cache}: no calibration ranges; run calibrate() first")
    with _hushed():
        quantize_static(
            str(src), str(dest), None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=ranges.calibration_method(method),
            extra_options=dict(_OPTIONS),
            calibration_cache_path=str(cache),
        )
    model = onnx.load(str(dest))
    if float_side_inputs(model):
        onnx.save(model, str(dest))


def float_side_inputs(model: onnx.ModelProto) -> int:
    """Give every consumer that is not Conv/MatMul/Gemm the float tensor back.

    onnxruntime routes all readers of a quantized tensor through its DequantizeLinear, so
    residual Adds, GELU's Mul and reshapes would read INT8-rounded values and the error
    would pile up along the residual stream block after block. Only the quantized op's
    own input should be rounded. Returns how many inputs were given back.
    """
    prod = {o: n for n in model.graph.node for o in n.output}
    changed = 0
    for n in model.graph.node:
        if n.op_type in QUANT_OPS or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, t in enumerate(n.input):
            dq = prod.get(t)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
                changed += 1
    return changed


def quantize_dynamic_cpu(src: Path, dest: Path, exclude: Sequence[str] = ()) -> None:
    """MatMul weights to INT8, activations quantized per call (onnxruntime CPU only)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dest) as tmp, _hushed():
        quantize_dynamic(str(src), str(tmp), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         extra_options={"MatMulConstBOnly": True})


@contextlib.contextmanager
def _hushed():
    """onnxruntime's quantizer prints histogram chatter to stdout and advice to the root
    logger; stdout is for the report, and the advice (run its preprocessing) is declined:
    its fusions would rename the nodes TensorRT and the manifest refer to."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def rank_nodes(src: Path, nodes: Sequence[str], method: str, cache: Path, probe: Probe,
               max_trials: int = MAX_TRIALS, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Nodes by the damage each does quantized alone (largest first), measured by `probe`.

    With more nodes than `max_trials`, consecutive groups are measured first and only the
    worst groups are opened up node by node; the rest inherit their group's share.
    """
    nodes = list(nodes)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"

        def alone(subset) -> float:
            keep = set(subset)
            quantize(src, trial, method, cache, [n for n in nodes if n not in keep])
            return probe(trial)

        if len(nodes) <= max_trials:
            losses = {}
            for k, n in enumerate(nodes):
                losses[n] = alone([n])
                log(f"sensitivity {k + 1}/{len(nodes)}: {n} -> {losses[n]:.3g}")
            return _ranked(losses, {})
        size = math.ceil(len(nodes) / (max_trials // 2))
        groups = [nodes[i:i + size] for i in range(0, len(nodes), size)]
        group_loss = {tuple(g): alone(g) for g in groups}
        log(f"sensitivity: {len(groups)} groups of {size} measured")
        losses, inherited, budget = {}, {}, max_trials - len(groups)
        for g, gl in sorted(group_loss.items(), key=lambda kv: -kv[1]):
            for n in g:
                if budget > 0:
                    losses[n] = alone([n])
                    budget -= 1
                else:
                    inherited[n] = gl / len(g)
        return _ranked(losses, inherited)


def _ranked(losses: dict, inherited: dict) -> list[dict]:
    rows = [{"node": n, "loss": v, "measured": True} for n, v in losses.items()]
    rows += [{"node": n, "loss": v, "measured": False} for n, v in inherited.items()]
    return sorted(rows, key=lambda r: -r["loss"])


def smallest_exclusion(order: Sequence[str], judged: Callable[[list[str]], Verdict],
                       log: Callable[[str], None] = lambda s: None) -> tuple[list[str], Verdict, list[dict]]:
    """The fewest leading nodes of `order` to leave in float so that the judge passes.

    Doubling finds a passing count, bisection the smallest one; if even everything in
    float fails the judge, everything stays float and the verdict says so.
    """
    trials = []

    def run(k: int) -> Verdict:
        v = judged(list(order[:k]))
        trials.append({"excluded": k, "loss": v.loss, "passed": v.passed})
        log(f"{k} node(s) in float -> loss {v.loss:.3g}, {'passes' if v.passed else 'fails'}")
        return v

    lo, k, seen = 0, 1, {}
    while k < len(order):
        seen[k] = run(k)
        if seen[k].passed:
            break
        lo, k = k, k * 2
    else:
        k = len(order)
        seen[k] = run(k)
        if not seen[k].passed:
            return list(order), seen[k], trials
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        seen[mid] = run(mid)
        if seen[mid].passed:
            hi = mid
        else:
            lo = mid
    return list(order[:hi]), seen[hi], trials
