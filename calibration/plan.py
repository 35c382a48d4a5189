"""The precision plan, stated statically: which arithmetic type TensorRT will use where.

Under strong typing (TensorRT 11 always; 10 with STRONGLY_TYPED, as trt_build.py builds)
every tensor has the type the ONNX gives it, so the plan can be read from the file:

- Counted FLOPs: Conv, ConvTranspose, MatMul, Gemm and Einsum, at 2 FLOPs per multiply-
  accumulate, from shapes that onnx's shape inference derives (the decoder's dynamic axes
  at the contract's opt: one prompt of two tokens, unless told otherwise).
- Type of a counted node: INT8 when both of its operands come from DequantizeLinear of
  INT8 data (through Reshape/Transpose-like moves, which TensorRT commutes with DQ to fuse
  it), else its first operand's float type. FP32 means FP32 on CUDA cores: trt_build
  clears TF32, so it is never TF32.
- Other arithmetic (adds, GELU, LayerNorm, Softmax, reductions...): one operation per
  element of the larger of the data input and the output, by output type, reported apart
  (not in the shares): on a GPU they cost memory traffic rather than tensor-core time.
  Data movement (reshape, transpose, slice, concat, gather...), casts, shape arithmetic
  and Q/DQ themselves are not counted. LayerNormalization with stash_type=1 computes its
  statistics in FP32 whatever its storage type; it is listed under its storage type.

predict() turns a plan into a latency on a named GPU from published dense peak rates and
a stated efficiency; it is a yardstick to check against the first real measurement, not
a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from medsam_edge.contract import AXES

MATRIX_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "MatMulInteger", "ConvInteger")
# onnxruntime's dynamic INT8 ops (encoder.int8dyn.onnx): counted as INT8, though TensorRT builds neither.
_INTEGER_OPS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}
TYPE_NAMES: dict[int, str] = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
              TensorProto.INT8: "INT8", TensorProto.DOUBLE: "FP64", TensorProto.UINT8: "UINT8",
              TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL"}
TYPES = ("INT8", "FP16", "BF16", "FP32")
_WIDTH = {"INT8": 1, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8}
# TensorRT moves a DequantizeLinear past these to fuse it into the matrix op that follows.
_COMMUTING = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
_NOT_COUNTED = {"Reshape", "Transpose", "Slice", "Split", "Concat", "Gather", "GatherElements", "GatherND", "Shape",
                "Unsqueeze", "Squeeze", "Expand", "Pad", "Identity", "Flatten", "Constant", "ConstantOfShape",
                "ScatterElements", "ScatterND", "Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "Range",
                "Size", "Tile", "NonZero", "Resize"} | set(MATRIX_OPS)
COUNTING = ("Conv/ConvTranspose/MatMul/Gemm/Einsum: 2 FLOPs per multiply-accumulate, in the type TensorRT "
            "will run them (INT8 when both operands are dequantized INT8); other arithmetic: one op per "
            "element, by output type, reported apart; data movement, casts and Q/DQ not counted")


def _fixed_inputs(model: onnx.ModelProto, dims: dict[str, int]) -> None:
    """Give the dynamic axes of the graph inputs concrete sizes, so shapes propagate."""
    for vi in model.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                d.dim_value = dims[d.dim_param]


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference (it follows the decoder's Shape -> arithmetic ->
    Reshape chains, which onnx's data propagation leaves unknown), else onnx's own."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # it refuses some graphs (unknown ops, odd domains): onnx's is the fallback
        return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, list], dict[str, int]]:
    inferred = _infer(model)
    shapes, types = {}, {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for i in model.graph.initializer:
        shapes[i.name], types[i.name] = list(i.dims), i.data_type
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]], types[n.output[0]] = list(a.t.dims), a.t.data_type
    return shapes, types


def _known(shape) -> bool:
    return bool(shape) and all(isinstance(d, int) and d > 0 for d in shape)


def matrix_flops(node: onnx.NodeProto, shapes: dict[str, list]) -> int | None:
    """2 x multiply-accumulates of one Conv/ConvTranspose/MatMul/Gemm/Einsum; None if a
    shape it needs is unknown."""

    def get(name: str) -> list:
        return shapes.get(name) or []

    op = _INTEGER_OPS.get(node.op_type, node.op_type)
    if op in ("Conv", "ConvTranspose"):
        x, w, y = get(node.input[0]), get(node.input[1]), get(node.output[0])
        if not (_known(x) and _known(w) and _known(y)):
            return None
        kernel = int(np.prod(w[2:]))
        if op == "Conv":  # W (M, C/g, k...): every output element sums C/g x k products
            return 2 * int(np.prod(y)) * w[1] * kernel
        return 2 * int(np.prod(x)) * w[1] * kernel  # W (C, M/g, k...): every input element feeds M/g x k
    if op == "MatMul":
        a, y = get(node.input[0]), get(node.output[0])
        if not (_known(a) and _known(y)):
            return None
        return 2 * int(np.prod(y)) * a[-1]
    if op == "Gemm":
        a, y = get(node.input[0]), get(node.output[0])
        if not (_known(a) and _known(y)):
            return None
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        return 2 * int(np.prod(y)) * (a[0] if trans_a else a[-1])
    if op == "Einsum":
        eq = next(x.s.decode() for x in node.attribute if x.name == "equation").replace(" ", "")
        lhs = eq.split("->")[0].split(",")
        sizes: dict[str, int] = {}
        for letters, name in zip(lhs, node.input):
            s = get(name)
            if not _known(s) or "." in letters or len(letters) != len(s):
                return None
            sizes.update(zip(letters, s))
        return 2 * int(np.prod(list(sizes.values()))) * max(1, len(lhs) - 1)
    return None


def _dequantized_int8(name: str, producer: dict, types: dict) -> bool:
    seen = 0
    while name in producer and producer[name].op_type in _COMMUTING and seen < 8:
        name, seen = producer[name].input[0], seen + 1
    n = producer.get(name)
    return n is not None and n.op_type == "DequantizeLinear" and types.get(n.input[0]) == TensorProto.INT8


def plan_model(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict:
    """The plan of an in-memory model (see plan())."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    _fixed_inputs(model_copy, {**{k: v[1] for k, v in AXES.items()}, **(dims or {})})
    shapes, types = _shapes(model_copy)
    producer = {o: n for n in model_copy.graph.node for o in n.output}
    flops = dict.fromkeys(TYPES, 0)
    nodes = dict.fromkeys(TYPES, 0)
    other: dict[str, int] = {}
    uncounted, fp32_nodes = [], []
    for n in model_copy.graph.node:
        if n.op_type in MATRIX_OPS:
            f = matrix_flops(n, shapes)
            if f is None:
                uncounted.append(n.name)
                continue
            operands = n.input[:2]
            if n.op_type in _INTEGER_OPS or all(_dequantized_int8(t, producer, types) for t in operands):
                kind = "INT8"
            else:
                kind = TYPE_NAMES.get(types.get(n.input[0], 0), "FP32")
            kind = kind if kind in flops else "FP32"
            flops[kind] += f
            nodes[kind] += 1
            if kind == "FP32":
                fp32_nodes.append((f, n.name))
        elif n.op_type not in _NOT_COUNTED and n.output:
            sizes = [shapes.get(t) for t in (n.input[0] if n.input else None, n.output[0]) if t]
            known = [int(np.prod(s or [])) for s in sizes if _known(s)]
            kind = TYPE_NAMES.get(types.get(n.output[0], 0), "?")
            if known and kind in TYPES:  # float arithmetic; shape and index integers are negligible
                other[kind] = other.get(kind, 0) + max(known)
    total = sum(flops.values())
    return {
        "flops": flops,
        "total_flops": total,
        "share": {k: (v / total if total else 0.0) for k, v in flops.items()},
        "matrix_nodes": nodes,
        "other_ops": other,
        "uncounted_nodes": uncounted,
        "largest_fp32_nodes": [name for _, name in sorted(fp32_nodes, reverse=True)[:5]],
        "dims": {**{k: v[1] for k, v in AXES.items()}, **(dims or {})},
        "counting": COUNTING,
    }


def plan(path: str | Path, dims: dict[str, int] | None = None) -> dict:
    """The precision plan of one ONNX file.

    dims: sizes for the decoder's dynamic axes (num_prompts, num_points); default the
    contract's opt. Returns flops/share/matrix_nodes per type (INT8, FP16, BF16, FP32),
    other_ops (element counts by type), uncounted_nodes (shape unknown), and how it counted.
    """
    path = Path(path)
    return {"file": path.name, **plan_model(onnx.load(str(path)), dims)}


@dataclass(frozen=True)
class GpuSpec:
    """Published dense peak rates (ops/s) per arithmetic type, and memory bandwidth (B/s)."""

    name: str
    peak: dict
    memory_bandwidth: float
    source: str


# Dense (no structured sparsity) peaks; datasheets quote "with sparsity" figures at twice these.
GPUS = {
    # NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM): FP32 19.5 TFLOPS, FP16/BF16 Tensor
    # Core 312 TFLOPS, INT8 Tensor Core 624 TOPS, 2,039 GB/s HBM2e.
    "A100": GpuSpec("NVIDIA A100 80GB SXM", {"FP32": 19.5e12, "FP16": 312e12, "BF16": 312e12, "INT8": 624e12},
                    2.039e12, "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM, dense)"),
    # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): FP32 67 TFLOPS, FP16/BF16 Tensor Core
    # 1,979 TFLOPS and INT8 3,958 TOPS with sparsity (989.5 / 1,979 dense), 3.35 TB/s HBM3.
    "H100": GpuSpec("NVIDIA H100 SXM", {"FP32": 67e12, "FP16": 989.5e12, "BF16": 989.5e12, "INT8": 1979e12},
                    3.35e12, "NVIDIA H100 Tensor Core GPU datasheet (SXM5, dense = half the sparse figures)"),
    # NVIDIA Jetson AGX Orin Series technical brief / Jetson AGX Orin 64GB data sheet: GPU of
    # 2048 CUDA cores (5.3 FP32 TFLOPS) and 64 Tensor Cores (170 sparse INT8 TOPS, so 85
    # dense; FP16 dense is half the INT8 rate on Ampere Tensor Cores, as A100's 312 vs 624),
    # 204.8 GB/s LPDDR5. The DLAs are not counted: these engines run on the GPU.
    "Orin": GpuSpec("NVIDIA Jetson AGX Orin 64GB (GPU, MAXN)",
                    {"FP32": 5.3e12, "FP16": 42.5e12, "BF16": 42.5e12, "INT8": 85e12},
                    204.8e9, "Jetson AGX Orin Series technical brief (GPU only, dense)"),
}
# Fractions of peak assumed: TensorRT's large GEMM/conv tactics reach about half the dense
# tensor-core peak on ViT-sized layers, elementwise kernels about 60% of memory bandwidth.
# Stated, not measured: the first real GPU run (bench/gpu_check.py) checks them.
EFFICIENCY = {"matrix": 0.5, "memory": 0.6}


def predict(p: dict, gpu: str, efficiency: dict | None = None) -> dict:
    """Latency a plan predicts on one of GPUS: counted FLOPs at peak x efficiency per type,
    plus the other ops' memory traffic at bandwidth x efficiency, each element written once
    in its type (TensorRT fuses pointwise chains into their producers, so reads mostly come
    free; where it cannot, this is low). Returns milliseconds per part and in total, with
    the assumptions used."""
    if gpu not in GPUS:
        raise KeyError(f"unknown GPU {gpu!r}; expected one of {', '.join(GPUS)}")
    spec, eff = GPUS[gpu], {**EFFICIENCY, **(efficiency or {})}
    matrix = {t: p["flops"][t] / (spec.peak[t] * eff["matrix"]) * 1e3 for t in TYPES if p["flops"].get(t)}
    traffic = sum(n * _WIDTH.get(t, 4) for t, n in p["other_ops"].items())
    memory_ms = traffic / (spec.memory_bandwidth * eff["memory"]) * 1e3
    return {
        "gpu": spec.name,
        "matrix_ms": matrix,
        "memory_ms": memory_ms,
        "total_ms": sum(matrix.values()) + memory_ms,
        "efficiency": eff,
        "source": spec.source,
    }


def plan_files(files, gpus, dims: dict | None = None) -> dict:
    """{file name: {**plan, "predicted": {gpu: predict()}}} for each ONNX file."""
    out = {}
    for f in files:
        p = plan(f, dims)
        out[p["file"]] = {**p, "predicted": {g: predict(p, g) for g in gpus}}
    return out


def model_dir_plan(model_dir, gpus=None, dims: dict | None = None) -> dict:
    """The plan of every *.onnx in a model directory (for reports and the manifest)."""
    files = sorted(Path(model_dir).glob("*.onnx"))
    return plan_files(files, list(gpus or GPUS), dims)
