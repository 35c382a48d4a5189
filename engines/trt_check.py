"""A static TensorRT compatibility check of an ONNX file: what its parser and builder
would refuse, found on any machine, one line naming the node.

Checked, from the file alone (onnx shape inference for the types):
- opset within what TensorRT 10's parser reads (9 to 20; later 10.x and 11 read more);
- every node's op type, and the type of its data input (or output), in the operator
  table of onnx-tensorrt (docs/operators.md of the 10.1 GA release: a conservative
  baseline, every later 10.x and 11.x supports at least these); a few of its stated
  restrictions (axes of Pad/Squeeze/Unsqueeze/Reduce* constant, LayerNormalization's
  first output only, Resize modes, no antialias); no DOUBLE, INT8 only through Q/DQ;
- Q/DQ as TensorRT's explicit quantization takes it (onnx-tensorrt's
  QuantDequantLinearHelper): int8 zero points present and all zero (symmetric), constant
  positive finite scales of a float type (FP16 ones normal), per-tensor scales on
  activations, per-channel scales only on constant weights and on the consuming
  Conv/MatMul/Gemm's output-channel axis, no dead Q/DQ (a DequantizeLinear nobody reads);
- every dynamic axis of a graph input covered by the optimisation profile the builder
  will use (engine_manifest.profiles), with fixed axes equal and min <= opt <= max.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from medsam_edge.errors import InputError

OPSET_RANGE = (9, 20)
_GROUPS = (
    ("BF16 FP16 FP32", """
        Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv ConvTranspose Cos
        Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
        GroupNormalization GRU HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization IsInf
        LayerNormalization LeakyRelu Log LogSoftmax LRN LSTM LpNormalization LpPool MatMul MaxPool
        MeanVarianceNormalization ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
        RandomUniform RandomUniformLike Reciprocal Resize RNN Round ScaledTanh Scan Selu Sigmoid Sin Sinh
        Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample"""),
    ("BF16 FP16 FP32 INT32 INT64", """
        Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max Min
        Mod Mul Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
        ReduceProd ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth
        Sub Sum TopK"""),
    ("BF16 BOOL FP16 FP32 INT32 INT64", """
        Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements GatherND Identity If
        Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze
        Where"""),
    ("FP16 FP32", "DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign"),
    ("BOOL", "And Not Or Xor"),
    ("BF16 BOOL FP16 FP32 INT32 INT64 UINT8", "Cast CastLike"),
    ("FP8 INT4 INT8", "DequantizeLinear"),
    ("BF16 FP16 FP32 INT32 INT64 INT8", "Gelu"),
    ("BF16 FP16 FP32 FP8 INT32 INT64", "Mean"),
)
#: op type -> the data types TensorRT's ONNX parser takes for it
SUPPORTED: dict[str, frozenset] = {op: frozenset(types.split()) for types, ops in _GROUPS for op in ops.split()}
TYPE_NAMES: dict[int, str] = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
              TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
              TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.DOUBLE: "DOUBLE",
              TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.INT4: "INT4", TensorProto.INT16: "INT16",
              TensorProto.UINT16: "UINT16", TensorProto.UINT32: "UINT32", TensorProto.UINT64: "UINT64",
              TensorProto.STRING: "STRING"}
_IO_TYPES = {"FP32", "FP16", "BF16", "INT32", "INT64", "BOOL", "UINT8"}
_FLOATS = {"FP32", "FP16", "BF16"}
_AXES_INPUT = {"Pad": 3, "Squeeze": 1, "Unsqueeze": 1, "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1,
               "ReduceMin": 1, "ReduceProd": 1, "ReduceL1": 1, "ReduceL2": 1, "ReduceLogSum": 1,
               "ReduceLogSumExp": 1, "ReduceSumSquare": 1, "CumSum": 1}
_RESIZE = {"coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                              "asymmetric", "align_corners"},
           "mode": {"nearest", "linear"},
           "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}}
_MATRIX_AXIS = {"Conv": lambda node, rank: 0, "ConvTranspose": lambda node, rank: 1,
                "MatMul": lambda node, rank: rank - 1,
                "Gemm": lambda node, rank: 0 if _attr(node, "transB", 0) else 1}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Graph:
    """What the rules need to know about one graph: types, constants, producers, consumers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # e.g. an operator of an unknown domain: that is reported on its own
            inferred = model
        g = model.graph
        self.types = {v.name: v.type.tensor_type.elem_type
                      for v in list(inferred.graph.value_info) + list(g.input) + list(g.output)}
        self.consts: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and _attr(n, "value") is not None:
                self.consts[n.output[0]] = _attr(n, "value")
        self.types.update({k: v.data_type for k, v in self.consts.items()})
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        self.outputs = {o.name for o in g.output}

    def type_name(self, t: str) -> str | None:
        k = self.types.get(t)
        return TYPE_NAMES.get(k, f"type {k}") if k else None

    def const(self, t: str) -> np.ndarray | None:
        seen = 0
        while t not in self.consts and t in self.producer and self.producer[t].op_type == "Identity" and seen < 4:
            t, seen = self.producer[t].input[0], seen + 1
        return numpy_helper.to_array(self.consts[t]) if t in self.consts else None


def problems(path: str | Path, profile: dict | None = None) -> list[str]:
    """Every problem TensorRT would have with the file, one line each ([] if none).

    profile: {input name: {"min": [...], "opt": [...], "max": [...]}}, the optimisation
    profile the builder will use for this file; None: dynamic axes are not checked.
    """
    path = Path(path)
    model = onnx.load(str(path))
    return [f"{path.name}: {p}" for p in model_problems(model, profile)]


def model_problems(model: onnx.ModelProto, profile: dict | None = None) -> list[str]:
    g = _Graph(model)
    out: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        out.append(f"opset {opset}: TensorRT 10's ONNX parser reads opsets {OPSET_RANGE[0]} to {OPSET_RANGE[1]}")
    for vi in list(model.graph.input) + list(model.graph.output):
        t = g.type_name(vi.name)
        if t not in _IO_TYPES:
            out.append(f"graph input/output {vi.name!r} is {t}: TensorRT network I/O takes {', '.join(sorted(_IO_TYPES))}")
    for n in model.graph.node:
        out += [f"node {n.name!r} ({n.op_type}): {p}" for p in _node_problems(n, g)]
    out += _int8_problems(model, g)
    if profile is not None:
        out += _profile_problems(model, profile)
    return out


def _node_problems(n: onnx.NodeProto, g: _Graph) -> list[str]:
    if n.domain not in ("", "ai.onnx"):
        return [f"custom domain {n.domain!r}: TensorRT's ONNX parser has no such operator (it would need a plugin)"]
    if n.op_type not in SUPPORTED:
        return ["not supported by TensorRT's ONNX parser (onnx-tensorrt operator table)"]
    allowed = SUPPORTED[n.op_type]
    data = n.input[0] if n.input and n.input[0] else (n.output[0] if n.output else "")
    t = g.type_name(data)
    found = []
    if t is not None and t not in allowed and n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Shape", "Size"):
        found.append(f"{t} input {data!r}: TensorRT takes {', '.join(sorted(allowed))} here")
    if n.op_type == "Cast":
        to = TYPE_NAMES.get(_attr(n, "to"), "?")
        if to not in allowed:
            found.append(f"cast to {to}: TensorRT casts to {', '.join(sorted(allowed))}")
    for o in n.output:
        if g.type_name(o) == "DOUBLE":
            found.append(f"DOUBLE output {o!r}: TensorRT has limited DOUBLE support (casts it to FP32); export float32")
    k = _AXES_INPUT.get(n.op_type)
    if k is not None and len(n.input) > k and n.input[k] and g.const(n.input[k]) is None:
        found.append(f"axes input {n.input[k]!r} is computed at run time: TensorRT needs it constant")
    if n.op_type == "LayerNormalization" and any(o and (g.consumers.get(o) or o in g.outputs) for o in n.output[1:]):
        found.append("only the first output (Y) is supported by TensorRT")
    if n.op_type == "Resize":
        for name, ok in _RESIZE.items():
            v = _attr(n, name)
            v = v.decode() if isinstance(v, bytes) else v
            if v is not None and v not in ok:
                found.append(f"{name}={v!r}: TensorRT supports {', '.join(sorted(ok))}")
        if _attr(n, "antialias", 0):
            found.append("antialias=1: TensorRT's Resize does not antialias")
    if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
        found += _qdq_problems(n, g)
    return found


def _qdq_problems(n: onnx.NodeProto, g: _Graph) -> list[str]:
    found = []
    is_q = n.op_type == "QuantizeLinear"
    x = n.input[0]
    x_type = g.type_name(x)
    weight = g.const(x) is not None
    if is_q and x_type not in _FLOATS:
        found.append(f"quantizes {x_type} {x!r}: TensorRT quantizes FP32/FP16/BF16")
    if not is_q and x_type not in ("INT8", "FP8", "INT4"):
        found.append(f"dequantizes {x_type} {x!r}: TensorRT dequantizes INT8 (an INT32 bias or UINT8 input is not "
                     "part of its explicit quantization)")
    scale_name = n.input[1] if len(n.input) > 1 else ""
    scale = g.const(scale_name) if scale_name else None
    if scale is None:
        found.append(f"scale {scale_name!r} is not a build-time constant: TensorRT needs constant scales")
    else:
        s_type = g.type_name(scale_name)
        if s_type not in _FLOATS:
            found.append(f"scale of type {s_type}: TensorRT takes FP32, FP16 or BF16 scales")
        s = scale.astype(np.float64)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            found.append("scale not all positive and finite: TensorRT refuses it")
        elif s_type == "FP16" and np.any(s < np.finfo(np.float16).tiny):
            found.append("FP16 scale below FP16's smallest normal: GPU kernels may flush it to zero")
        if is_q and x_type in _FLOATS and s_type != x_type:
            found.append(f"scale is {s_type} for a {x_type} input: opset 19 wants them alike")
        if scale.size > 1:
            found += _per_channel_problems(n, g, scale, weight)
    zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else ""
    if not zp_name:
        if is_q:
            found.append("no zero point: ONNX then quantizes to UINT8, which TensorRT reads as INT8; "
                         "give an int8 zero point of 0")
    else:
        zp = g.const(zp_name)
        if zp is None:
            found.append(f"zero point {zp_name!r} is not a constant")
        elif zp.dtype != np.int8:
            found.append(f"zero point of type {zp.dtype}: TensorRT quantizes to INT8 only (int8 zero points)")
        elif np.any(zp != 0):
            found.append(f"zero point {zp.reshape(-1)[np.flatnonzero(zp)[0]]}: TensorRT supports symmetric "
                         "quantization only (zero points 0)")
    return found


def _per_channel_problems(n: onnx.NodeProto, g: _Graph, scale: np.ndarray, weight: bool) -> list[str]:
    if not weight:
        return [f"{scale.size} scales on activation {n.input[0]!r}: TensorRT quantizes activations per tensor"]
    w = g.const(n.input[0])
    assert w is not None  # `weight` says it is a constant
    axis = int(_attr(n, "axis", 1))
    axis = axis + w.ndim if axis < 0 else axis
    found = []
    if scale.ndim != 1 or axis >= w.ndim or w.shape[axis] != scale.size:
        found.append(f"{scale.size} scales for axis {axis} of a {list(w.shape)} weight: one per channel expected")
    if n.op_type == "DequantizeLinear":
        for c in g.consumers.get(n.output[0], []):
            if c.op_type in _MATRIX_AXIS and list(c.input).index(n.output[0]) == 1:
                want = _MATRIX_AXIS[c.op_type](c, w.ndim)
                if axis != want:
                    found.append(f"per-channel axis {axis} of weight {n.input[0]!r}, but {c.op_type} {c.name!r} "
                                 f"has its output channels on axis {want}")
    return found


def _int8_problems(model: onnx.ModelProto, g: _Graph) -> list[str]:
    """INT8 lives only between a QuantizeLinear and DequantizeLinears; no DQ is dead."""
    found = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            readers = g.consumers.get(n.output[0], [])
            others = [c for c in readers if c.op_type != "DequantizeLinear"]
            if others:
                found.append(f"node {n.name!r} (QuantizeLinear): its INT8 output feeds {others[0].op_type} "
                             f"{others[0].name!r}; TensorRT takes INT8 only into DequantizeLinear")
        if n.op_type == "DequantizeLinear" and not g.consumers.get(n.output[0]) and n.output[0] not in g.outputs:
            found.append(f"node {n.name!r} (DequantizeLinear): dead Q/DQ (nothing reads {n.output[0]!r}); "
                         "TensorRT keeps it as extra layers")
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant", "Identity"):
            for t in n.input:
                if t and g.type_name(t) == "INT8":
                    found.append(f"node {n.name!r} ({n.op_type}): reads INT8 {t!r}; INT8 is a quantized type in "
                                 "TensorRT, reachable only through DequantizeLinear")
                    break
    return found


def _profile_problems(model: onnx.ModelProto, profile: dict) -> list[str]:
    found = []
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    names = {vi.name for vi in inputs}
    for name in sorted(set(profile) - names):
        found.append(f"profile for input {name!r}, which the graph does not have")
    for vi in inputs:
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in vi.type.tensor_type.shape.dim]
        p = profile.get(vi.name)
        if p is None:
            if any(d is None for d in dims):
                found.append(f"input {vi.name!r} has dynamic axes {dims} but no optimisation profile covers it")
            continue
        lo, opt, hi = (list(p[k]) for k in ("min", "opt", "max"))
        if not len(lo) == len(opt) == len(hi) == len(dims):
            found.append(f"input {vi.name!r} has rank {len(dims)}, its profile {lo}/{opt}/{hi}")
            continue
        for k, d in enumerate(dims):
            if d is not None and not lo[k] == opt[k] == hi[k] == d:
                found.append(f"input {vi.name!r} axis {k} is fixed at {d}, its profile says {lo[k]}/{opt[k]}/{hi[k]}")
            elif d is None and not 1 <= lo[k] <= opt[k] <= hi[k]:
                found.append(f"input {vi.name!r} axis {k}: profile min/opt/max {lo[k]}/{opt[k]}/{hi[k]} not ordered")
    return found


def check(path: str | Path, profile: dict | None = None) -> None:
    """Raise InputError with the first problem (and how many more) if TensorRT would refuse the file."""
    found = problems(path, profile)
    if found:
        more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
        raise InputError(f"{Path(path).parent / found[0]}{more}; TensorRT would refuse this file")


def check_build_inputs(md, precisions, shapes: dict) -> list[Path]:
    """The ONNX files `medsam-edge build` will read for `precisions`, each checked against
    its part's profile (engine_manifest.profiles). Returns the files checked."""
    from medsam_edge.engines import engine_manifest as em

    files = []
    for p in precisions:
        for part in em.PARTS:
            f = em.onnx_for(md, part, p)
            if f not in files:
                check(f, shapes[part])
                files.append(f)
    return files
