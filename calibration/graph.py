"""ONNX graph facts the precision passes need: float tensors, their ranges on real data.

Kept apart from the passes so FP16 and INT8 read the graph the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto

# A tensor whose size shape inference cannot tell is budgeted as this big, not as free.
UNKNOWN_BYTES = 256 << 20


def load_with_shapes(path: str | Path) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(onnx.load(str(path)))


_WIDTH = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2}


def tensor_sizes(model: onnx.ModelProto, elem_types=(TensorProto.FLOAT,)) -> dict[str, int]:
    """Typed tensors of the graph (inputs, outputs, inferred values) -> size in bytes
    (UNKNOWN_BYTES if not static)."""
    sizes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.elem_type in elem_types:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
            sizes[vi.name] = _WIDTH[t.elem_type] * int(np.prod(dims)) if dims and all(dims) else UNKNOWN_BYTES
    return sizes


def float_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Float32 tensors produced by nodes -> their size in bytes (UNKNOWN_BYTES if not static)."""
    produced = {o for n in model.graph.node for o in n.output}
    return {k: v for k, v in tensor_sizes(model).items() if k in produced}


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers and Constant outputs: weights, not activations."""
    out = {i.name for i in model.graph.initializer}
    return out | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def measuring_options(threads: int | None = None):
    """onnxruntime session options for a graph whose intermediate tensors are measured."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Fusions would hide the very tensors being measured.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # These three keep the peak memory of a range sweep low: the default order runs the peak
    # outputs late and keeps every tensor alive until then (docs/decisions.md#range-sweep-memory).
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def value_ranges(path: str | Path, feeds: Iterable[dict], threads: int | None = None) -> dict[str, float]:
    """Largest |value| (inf if any inf/NaN) each float tensor reaches over `feeds`, in FP32.

    Each tensor gets an Abs -> ReduceMax output inside the graph, so one run per frame
    returns scalars: fetching the tensors themselves would need ~31 GB per frame for the
    full ViT-B (its global attention maps), more than the machine has.
    """
    import onnxruntime as ort

    model = load_with_shapes(path)
    wanted = float_tensors(model)
    names, peak_outputs, nodes = [], [], []
    for node in model.graph.node:
        nodes.append(node)
        for name in node.output:
            if name not in wanted:
                continue
            k = len(names)
            nodes.append(onnx.helper.make_node("Abs", [name], [f"__abs_{k}"], name=f"__peak_abs_{k}"))
            nodes.append(onnx.helper.make_node("ReduceMax", [f"__abs_{k}"], [f"__absmax_{k}"],
                                               name=f"__peak_max_{k}", keepdims=0))
            model.graph.output.append(onnx.helper.make_tensor_value_info(f"__absmax_{k}", TensorProto.FLOAT, []))
            names.append(name)
            peak_outputs.append(f"__absmax_{k}")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    opts = measuring_options(threads)
    peak: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "peaks.onnx"
        onnx.save(model, str(f))
        sess = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
        for feed in feeds:
            for name, val in zip(names, sess.run(peak_outputs, feed)):
                v = float(val)
                peak[name] = max(peak.get(name, 0.0), v if np.isfinite(v) else float("inf"))
    return peak


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
