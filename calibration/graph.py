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

# Intermediate tensors are fetched in groups of at most this many bytes per frame: the
# full ViT-B's global attention maps alone would fill the machine's memory.
CHUNK_BYTES = 1 << 30


def load_with_shapes(path: str | Path) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(onnx.load(str(path)))


def float_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Float32 tensors produced by nodes -> their size in bytes (0 if not static)."""
    known = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.elem_type == TensorProto.FLOAT:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
            known[vi.name] = 4 * int(np.prod(dims)) if dims and all(dims) else 0
    produced = {o for n in model.graph.node for o in n.output}
    return {k: v for k, v in known.items() if k in produced}


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers and Constant outputs: weights, not activations."""
    out = {i.name for i in model.graph.initializer}
    return out | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def value_ranges(path: str | Path, feeds: Iterable[dict], threads: int | None = None) -> dict[str, float]:
    """Largest |value| (inf if any inf/NaN) each float tensor reaches over `feeds`, in FP32."""
    import onnxruntime as ort

    model = load_with_shapes(path)
    sizes = float_tensors(model)
    chunks = _chunks(sizes)
    feeds = list(feeds)
    peak: dict[str, float] = {}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Fusions would hide the very tensors being measured.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        for chunk in chunks:
            m = onnx.ModelProto()
            m.CopyFrom(model)
            have = {o.name for o in m.graph.output}
            m.graph.output.extend(onnx.helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                  for n in chunk if n not in have)
            f = Path(tmp) / "probe.onnx"
            onnx.save(m, str(f))
            sess = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
            for feed in feeds:
                for name, val in zip(chunk, sess.run(chunk, feed)):
                    a = np.abs(val)
                    v = float(a.max()) if a.size and np.isfinite(a).all() else (float("inf") if a.size else 0.0)
                    peak[name] = max(peak.get(name, 0.0), v)
            del sess
    return peak


def _chunks(sizes: dict[str, int]) -> list[list[str]]:
    out, cur, used = [], [], 0
    for name, size in sizes.items():
        if cur and used + size > CHUNK_BYTES:
            out.append(cur)
            cur, used = [], 0
        cur.append(name)
        used += size
    return out + ([cur] if cur else [])


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
