"""INT8 in the ONNX: the FP16 mixed-precision graph plus Q/DQ, calibrated on real frames.

- The file is the FP16 graph (calibration/fp16.py: FP32 I/O, LayerNorm with its FP32
  stash, range-fragile nodes FP32) with Q/DQ on the inputs of Conv/MatMul/Gemm
  (calibration/qdq.py: symmetric INT8, zero points 0, per-channel weights, per-tensor
  activations, scales in the tensor's own type, no Q/DQ on outputs). Under TensorRT's
  strong typing every type comes from the file: Q/DQ put into the FP32 graph would leave
  everything between the quantized ops (LayerNorm, Softmax, GELU, residual adds,
  unquantized matmuls) in FP32 without tensor cores. Here every layer is INT8 or FP16
  unless measured fragile.
- Calibration ranges for every method come from one sweep over the frames in bounded
  memory (ranges.py) and are kept as onnxruntime calibration caches, which every trial of
  the sensitivity search reuses. The same call records every float tensor's peak on a few
  frames, from which quantize() keeps FP16-overflowing nodes FP32 unless the caller
  passes the FP16 pass's own decision (keep_fp32).
- Sensitivity: each quantizable node is quantized alone and the damage to the embedding
  measured (in groups first when there are many), then the most damaging nodes are left
  unquantized (FP16), as few as the judge on real frames allows (doubling, then bisection).
- A CPU-only variant, quantize_dynamic (MatMulInteger with per-call activation ranges),
  is offered separately: it is what onnxruntime's CPU kernels are fast at.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from medsam_edge.atomic import atomic_path

from . import fp16, qdq, ranges
from .fp16 import Verdict
from .graph import constant_names, value_ranges

QUANT_OPS = qdq.QUANT_OPS
METHODS = ("minmax", "entropy", "percentile")
# Memory for calibration tensors fetched at once (the machine has 24 GB, shared).
CALIB_BYTES = 2 << 30
# A full one-node-at-a-time pass above this many nodes would take too long on a CPU.
MAX_TRIALS = 96
# The share of the INT8 target's allowed Dice loss the searches may spend on calibration
# frames: unseen sources lose more than the frames judged (docs/decisions.md#int8-search-margin-and-backends).
SEARCH_MARGIN = 0.25
# Frames on which every float tensor's peak is measured (fp16.py's range rule reads them).
PEAK_FRAMES = 4
PERCENTILE = 99.99
Signal = Callable[[Path], float]  # a candidate file -> a cheap loss (evaluate.cosine_signal)


def scheme() -> dict:
    """The quantization scheme, for the manifest and the report."""
    return {"format": f"QDQ on the FP16 mixed-precision graph (opset {qdq.QDQ_OPSET})",
            "activations": "int8 symmetric per tensor (zero point 0), scale in the tensor's own type",
            "weights": "int8 symmetric per output channel", "bias": "float, in the layer's type",
            "quantized_ops": list(QUANT_OPS), "outputs": "not quantized (no Q/DQ on Conv/MatMul outputs)",
            "float_ops": "FP16, except nodes kept FP32 (the FP16 range rule, or keep_fp32)",
            "tool": "medsam_edge.calibration.qdq.insert_qdq; ranges from onnxruntime's HistogramCollector fed in "
                    "bounded memory (calibration/ranges.py)"}


def quantizable(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul/Gemm nodes in graph order."""
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS]


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls of two activations (attention scores and context), for the record."""
    consts = constant_names(model)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not set(n.input) & consts]


def peaks_path(cache: Path) -> Path:
    """Where collect_ranges() keeps the float tensors' peaks, beside a method's range cache."""
    return Path(cache).with_suffix(".peaks.json")


def collect_ranges(src: Path, reader, methods: Sequence[str], caches: dict[str, Path], threads: int | None = None,
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """Ranges for every method in `methods`, in one sweep over the reader's frames, and
    every float tensor's peak on the first PEAK_FRAMES frames (beside each cache).

    Bounded memory (see ranges.py): onnxruntime's own calibrator holds whole frames of
    tensors and ran the full ViT-B out of memory.
    """
    swept = ranges.write_caches(src, reader, methods, caches, QUANT_OPS, CALIB_BYTES,
                                percentile=PERCENTILE, threads=threads, log=log)
    peaks = value_ranges(src, _first(reader, PEAK_FRAMES), threads)
    for m in methods:
        peaks_path(caches[m]).write_text(json.dumps(peaks))
    swept["peak_frames"] = min(PEAK_FRAMES, swept["frames"])
    return swept


def _first(feeds: Iterable[dict], n: int) -> list[dict]:
    out: list[dict] = []
    for feed in feeds:
        if len(out) >= n:
            break
        out.append(feed)
    return out


def activation_ranges(cache: Path) -> dict[str, float]:
    """Calibrated max |x| per tensor, from an onnxruntime calibration cache."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    out = {}
    for name, td in load_tensors_data(cache).items():
        lo, hi = (np.abs(np.asarray(v, np.float64)).max() for v in td.range_value)
        out[name] = float(max(lo, hi))
    return out


def fp32_nodes(fp16_file: Path) -> list[str]:
    """Nodes an FP16 file (fp16.write_fp16) computes in FP32: pass them as quantize()'s
    keep_fp32 so that the INT8 file keeps the FP16 pass's measured decisions."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_file)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.input)}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    # The data path only (first input, outputs): Resize's scales, say, are FP32 in any file.
    return [n.name for n in m.graph.node if n.op_type != "Cast"
            and any(types.get(t) == onnx.TensorProto.FLOAT for t in list(n.input[:1]) + list(n.output))]


# The FP16 conversion of a big encoder takes a while (ViT-B: tens of seconds) and the
# sensitivity search quantizes the same source tens of times: the last one is kept.
_CONVERTED: dict = {}


def _fp16_base(src: Path, keep: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    st = Path(src).stat()
    key = (str(Path(src).resolve()), st.st_mtime_ns, st.st_size, tuple(sorted(keep)))
    if key not in _CONVERTED:
        _CONVERTED.clear()
        model = onnx.load(str(src))
        fp16.name_nodes(model)
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        _CONVERTED[key] = (fp16.convert(model, keep), weights)
    base, weights = _CONVERTED[key]
    out = onnx.ModelProto()
    out.CopyFrom(base)
    return out, weights


def quantize(src: Path, dest: Path, method: str, cache: Path, exclude: Sequence[str] = (),
             keep_fp32: Sequence[str] | None = None) -> dict:
    """Write the INT8 model for the FP32 file `src` to `dest` (atomically) from the ranges
    `collect_ranges` wrote to `cache` for `method`; returns what was done, for the manifest.

    exclude: Conv/MatMul/Gemm nodes left unquantized (they run FP16, or FP32 if kept so).
    keep_fp32: nodes of `src` that stay FP32. None: those whose measured peak (collect_ranges's
        record beside the cache) comes too close to FP16's limit, fp16.py's range rule.
        fp32_nodes(encoder.fp16.onnx) carries the FP16 pass's whole decision over.
    """
    if not Path(cache).is_file():
        raise FileNotFoundError(f"{cache}: no calibration ranges; run collect_ranges() first")
    keep = _range_kept(src, cache) if keep_fp32 is None else list(keep_fp32)
    model, weights = _fp16_base(src, keep)
    skip = set(exclude)
    nodes = [n.name for n in model.graph.node if n.op_type in QUANT_OPS and n.name not in skip]
    rec = qdq.insert_qdq(model, weights, activation_ranges(cache), nodes)
    qdq.drop_unused_initializers(model)
    with atomic_path(dest) as tmp:
        onnx.save(model, str(tmp))
    return {"method": method, "fp32_nodes": keep, **rec.to_json()}


def _range_kept(src: Path, cache: Path) -> list[str]:
    path = peaks_path(cache)
    if not path.is_file():
        return []
    model = onnx.load(str(src), load_external_data=False)
    fp16.name_nodes(model)
    return sorted(fp16.range_fragile(model, json.loads(path.read_text())))


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


def rank_nodes(src: Path, nodes: Sequence[str], method: str, cache: Path, signal: Signal,
               max_trials: int = MAX_TRIALS, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Nodes by the damage each does quantized alone (largest first), measured by `signal`.

    With more nodes than `max_trials`, consecutive groups are measured first and only the
    worst groups are opened up node by node; the rest inherit their group's share.
    """
    nodes = list(nodes)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"

        def alone(subset) -> float:
            keep = set(subset)
            quantize(src, trial, method, cache, [n for n in nodes if n not in keep])
            return signal(trial)

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
        trials.append({"excluded": k, "loss": v.loss, "passed": v.passed, "judged": v.figures.get("judged")})
        on = f" on {v.figures['backend']}" if len(v.figures.get("judged") or ()) > 1 else ""
        log(f"{k} node(s) in float -> loss {v.loss:.3g}{on}, {'passes' if v.passed else 'fails'}")
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
