"""Q/DQ nodes on the inputs of Conv/MatMul/Gemm, written the way TensorRT reads them.

The graph they go into is the FP16 mixed-precision one (calibration/fp16.py), so under
TensorRT's strong typing every layer runs INT8 (a Conv/MatMul whose inputs both come from
a DequantizeLinear) or in the type the FP16 pass gave it; nothing falls back to FP32 for
lack of a type.

TensorRT's rules, as its ONNX parser (onnx-tensorrt's QuantDequantLinearHelper) and
the quantization guide state them, and how they are met here:
- symmetric INT8: zero points are explicit int8 zeros (a missing zero point means uint8
  in ONNX, which TensorRT would read as INT8 with another meaning);
- scales are constant and positive; an FP16 scale is kept at FP16's smallest normal or
  above (GPU kernels may flush subnormals to zero, and a zero scale is refused);
- a DequantizeLinear's output type is its scale's type under strong typing, so each
  scale has the type of the tensor it stands for (FP16 scales need opset 19, which every
  TensorRT 10 and 11 parser accepts: 10.0 reads opsets 9 to 20);
- activations per tensor, weights per channel on the output-channel axis;
- only the inputs are quantized: a Q/DQ on a Conv/MatMul output that nothing quantized
  reads would be a dead pair (TensorRT leaves it as two extra layers), so none is made.
Consumers other than the quantized node keep reading the unrounded tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QUANT_OPS = ("Conv", "MatMul", "Gemm")
QMAX = 127  # symmetric: [-127, 127], TensorRT's and onnxruntime's symmetric INT8 range
QDQ_OPSET = 19
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
_NP: dict[int, type] = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


@dataclass
class QdqRecord:
    """What insert_qdq did, for the manifest."""

    quantized: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # node -> why it stayed float
    activation_pairs: int = 0
    weight_dqs: int = 0
    clamped_scales: int = 0

    def to_json(self) -> dict:
        return {"quantized_nodes": len(self.quantized), "skipped": self.skipped,
                "activation_qdq_pairs": self.activation_pairs, "weight_dequantizers": self.weight_dqs,
                "scales_raised_to_fp16_min_normal": self.clamped_scales}


def weight_axis(op: str, node: onnx.NodeProto, rank: int) -> int | None:
    """The output-channel axis of a Conv/MatMul/Gemm weight, or None for per-tensor.

    Conv W is (M, C/g, kh, kw): axis 0. MatMul B (K, N): axis 1 (a batched B of rank > 2
    gets one scale). Gemm B is (K, N), or (N, K) with transB=1.
    """
    if op == "Conv":
        return 0
    if op == "MatMul":
        return 1 if rank == 2 else None
    if op == "Gemm":
        trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans else 1
    return None


def set_qdq_opset(model: onnx.ModelProto) -> None:
    """Opset 18 -> 19 in place: FP16 scales need QuantizeLinear/DequantizeLinear-19.

    Every operator changed between 18 and 19 (AveragePool, Cast, CastLike, Constant,
    Equal, Identity, If, Loop, Pad, Reshape, Resize, Scan, Shape, Size, Q/DQ) only gained
    types or modes, so the relabelled graph means what it meant.
    """
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < QDQ_OPSET:
            op.version = QDQ_OPSET


def _scale(value: np.ndarray, elem: int, rec: QdqRecord) -> np.ndarray:
    """amax / 127 in the tensor's own float type, positive and normal."""
    s = np.asarray(value, np.float64) / QMAX
    if elem == TensorProto.FLOAT16:
        low = s < FP16_MIN_NORMAL
        rec.clamped_scales += int(low.sum())
        s = np.where(low, FP16_MIN_NORMAL, np.minimum(s, float(np.finfo(np.float16).max)))
    else:
        s = np.maximum(s, float(np.finfo(np.float32).tiny))
    return s.astype(_NP[elem])


def insert_qdq(model: onnx.ModelProto, fp32_weights: dict[str, np.ndarray], amax: dict[str, float],
               nodes: list[str]) -> QdqRecord:
    """Quantize the inputs of `nodes` (Conv/MatMul/Gemm names) in `model`, in place.

    model: the graph to quantize (FP16 mixed or FP32), shape-inferable.
    fp32_weights: the FP32 values of its weight initializers (the scales and INT8 weights
        are computed from these, not from an FP16 rounding of them).
    amax: calibrated max |x| per activation tensor, keyed by the FP32 graph's names; a
        tensor reached through the FP16 pass's Cast nodes is looked up by the name before
        the Cast.
    """
    rec = QdqRecord()
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type
            for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name: i for i in model.graph.initializer}
    elem.update({k: v.data_type for k, v in inits.items()})
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    new_inits: list[onnx.TensorProto] = []
    before: dict[int, list[onnx.NodeProto]] = {}  # graph position -> Q/DQ nodes to put in front
    shared: dict[tuple, str] = {}  # (tensor, type[, op]) -> its DQ output, made once
    position = {id(n): k for k, n in enumerate(model.graph.node)}
    zeros: dict[tuple, str] = {}

    def zero_point(shape: tuple) -> str:
        """Int8 zeros of the scale's own shape (ONNX wants them alike), one per shape."""
        if shape not in zeros:
            zeros[shape] = f"__qdq_zp_{'x'.join(map(str, shape)) or 'scalar'}"
            new_inits.append(numpy_helper.from_array(np.zeros(shape, np.int8), zeros[shape]))
        return zeros[shape]

    def calibrated(t: str) -> float | None:
        seen = 0
        while t not in amax and t in producer and producer[t].op_type == "Cast" and seen < 4:
            t, seen = producer[t].input[0], seen + 1
        return amax.get(t)

    for name in sorted(nodes, key=lambda n: position[id(by_name[n])] if n in by_name else -1):
        node = by_name.get(name)
        if node is None or node.op_type not in QUANT_OPS:
            rec.skipped[name] = "not a Conv/MatMul/Gemm of this graph"
            continue
        # Both operands or neither: TensorRT runs a matrix op INT8 only when both are dequantized.
        why = next((f"input {t!r} is not FP32/FP16" for t in node.input[:2] if elem.get(t) not in _NP), None)
        why = why or next((f"no calibrated range for input {t!r}" for t in node.input[:2]
                           if t not in inits and not np.isfinite(calibrated(t) or np.nan)), None)
        if why:
            rec.skipped[name] = why
            continue
        for k in (0, 1):
            t = node.input[k]
            kind = elem[t]
            if t in inits:
                key: tuple = (t, kind, node.op_type, k)
                if key not in shared:
                    w = fp32_weights.get(t)
                    w = numpy_helper.to_array(inits[t]) if w is None else w
                    axis = weight_axis(node.op_type, node, np.ndim(w)) if k == 1 else None
                    shared[key] = _weight_dq(node, t, kind, w, axis, new_inits, before, position, zero_point, rec)
            else:
                key = (t, kind)
                if key not in shared:
                    a = float(calibrated(t))  # type: ignore[arg-type]  # checked finite above
                    shared[key] = _activation_qdq(t, kind, a, node, new_inits, before, position, zero_point, rec)
            node.input[k] = shared[key]
        rec.quantized.append(name)
    # Q/DQ in front of their first consumer keeps the node list topologically sorted.
    ordered: list[onnx.NodeProto] = []
    for k, n in enumerate(model.graph.node):
        ordered.extend(before.get(k, ()))
        ordered.append(n)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    model.graph.initializer.extend(new_inits)
    set_qdq_opset(model)
    return rec


def _activation_qdq(t, kind, a, consumer, new_inits, before, position, zero_point, rec) -> str:
    base = f"__qdq_{len(new_inits)}_{t}"
    scale = numpy_helper.from_array(_scale(np.array(float(a)), kind, rec), f"{base}_scale")
    new_inits.append(scale)
    zp = zero_point(())
    q = helper.make_node("QuantizeLinear", [t, scale.name, zp], [f"{base}_q"], name=f"{base}_Q")
    dq = helper.make_node("DequantizeLinear", [q.output[0], scale.name, zp], [f"{base}_dq"], name=f"{base}_DQ")
    before.setdefault(position[id(consumer)], []).extend([q, dq])
    rec.activation_pairs += 1
    return dq.output[0]


def _weight_dq(node, t, kind, w, axis, new_inits, before, position, zero_point, rec) -> str:
    """Symmetric INT8 weights (per channel on `axis`, or per tensor) and their DequantizeLinear."""
    w = np.asarray(w, np.float32)
    if axis is None:
        amax = np.array(np.abs(w).max())
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
    scale = _scale(amax, kind, rec)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w / scale.astype(np.float32).reshape(shape)), -QMAX, QMAX).astype(np.int8)
    base = f"__qdq_{len(new_inits)}_{t}"
    new_inits.append(numpy_helper.from_array(q, f"{base}_int8"))
    new_inits.append(numpy_helper.from_array(scale, f"{base}_scale"))
    attrs = {} if axis is None else {"axis": axis}
    dq = helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale", zero_point(scale.shape)],
                          [f"{base}_dq"], name=f"{base}_DQ", **attrs)
    before.setdefault(position[id(node)], []).append(dq)
    rec.weight_dqs += 1
    return dq.output[0]


def drop_unused_initializers(model: onnx.ModelProto) -> int:
    """Weights that only the float copy of a quantized node read go (their INT8 copy stays)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    dropped = len(model.graph.initializer) - len(keep)
    if dropped:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return dropped
