"""Calibration ranges for the INT8 pass, computed in bounded memory.

onnxruntime's own calibrators fetch every Conv/MatMul/Gemm tensor of a frame at once and
keep them until the frame is done: for the full ViT-B that is several GB per frame (its
global attention scores alone are 0.8 GB a layer), and its MinMax graph keeps every
tensor alive until its reductions run late — the machine ran out of memory. Here the
tensors are fetched in groups that fit a byte budget, one forward pass per group, and fed
to onnxruntime's own HistogramCollector one frame at a time (it merges histograms as it
goes), so every method sees exactly the data onnxruntime's calibrator would, at a peak of
one group. All methods come out of the same passes.

The result is written as onnxruntime's calibration cache (`save_tensors_data`), which
`quantize_static(calibration_cache_path=...)` then reads instead of calibrating again.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from .graph import load_with_shapes, measuring_options, tensor_sizes

# Entropy and percentile histogram settings: onnxruntime's defaults for each method.
_HIST = {"entropy": {"num_bins": 128, "num_quantized_bins": 128},
         "percentile": {"num_bins": 2048, "num_quantized_bins": 2048}}


def calibrated_tensors(model: onnx.ModelProto, op_types: Sequence[str]) -> dict[str, int]:
    """Float activations read or written by `op_types` -> bytes per frame.

    The same set onnxruntime's calibrator picks: inputs and outputs of those ops that are
    float and not weights.
    """
    sizes = tensor_sizes(model, (TensorProto.FLOAT, TensorProto.FLOAT16))
    weights = {i.name for i in model.graph.initializer}
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in op_types:
            for t in list(n.input) + list(n.output):
                if t in sizes and t not in weights:
                    out[t] = sizes[t]
    return out


def groups(sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Tensors in graph order, cut into runs whose bytes fit `budget` (a big one alone)."""
    out, cur, used = [], [], 0
    for name, size in sizes.items():
        if cur and used + size > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(name)
        used += size
    return out + ([cur] if cur else [])


def calibration_method(method: str):
    """onnxruntime's CalibrationMethod for one of int8.METHODS."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


class RangeCollector:
    """Symmetric min-max and onnxruntime's histograms, fed one frame's tensors at a time."""

    def __init__(self, methods: Sequence[str], percentile: float) -> None:
        from onnxruntime.quantization.calibrate import HistogramCollector

        self.methods = list(methods)
        self.absmax: dict[str, float] = {}
        self.hist = {m: HistogramCollector(method=m, symmetric=True, percentile=percentile,
                                           scenario="same", **_HIST[m])
                     for m in self.methods if m in _HIST}

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        for name, a in arrays.items():
            v = float(np.nanmax(np.abs(a))) if a.size else 0.0
            self.absmax[name] = max(self.absmax.get(name, 0.0), v)
        for h in self.hist.values():
            # A list per tensor: the collector's own per-frame format. It prints chatter.
            with contextlib.redirect_stdout(io.StringIO()):
                h.collect({name: [a] for name, a in arrays.items()})

    def tensors_data(self, method: str):
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        kind = calibration_method(method)
        if method == "minmax":
            data = {n: TensorData(lowest=np.array(-v, np.float32), highest=np.array(v, np.float32))
                    for n, v in self.absmax.items()}
            return TensorsData(kind, data)
        with contextlib.redirect_stdout(io.StringIO()):
            return TensorsData(kind, self.hist[method].compute_collection_result())


def _session(model: onnx.ModelProto, names: Sequence[str], path: Path, threads: int | None):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    outputs = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in outputs)
    onnx.save(m, str(path))
    return ort.InferenceSession(str(path), measuring_options(threads), providers=["CPUExecutionProvider"])


def write_caches(src: Path, feeds: Iterable[dict], methods: Sequence[str], caches: dict[str, Path],
                 op_types: Sequence[str], budget: int, percentile: float = 99.99,
                 threads: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Calibrate `src` on `feeds` for every method in one sweep; write each method's cache.

    `feeds` is walked once per group, so it must be re-iterable (a list, a FrameReader).

    Returns what was done, for the manifest: tensors, groups, passes per frame, frames.
    """
    from onnxruntime.quantization.calibrate import save_tensors_data

    model = load_with_shapes(src)
    sizes = calibrated_tensors(model, op_types)
    plan = groups(sizes, budget)
    collector = RangeCollector(methods, percentile)
    frames = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, names in enumerate(plan):
            # One session per group, with only its tensors as outputs: onnxruntime keeps
            # every graph output alive for the whole run, fetched or not.
            sess = _session(model, names, Path(tmp) / "calibrate.onnx", threads)
            frames = 0
            t0 = last = time.perf_counter()
            total = len(feeds) if hasattr(feeds, "__len__") else None
            for feed in feeds:
                collector.add(dict(zip(names, sess.run(names, feed))))
                frames += 1
                # Histograms of every tensor per frame take minutes on big models: say where it is.
                if time.perf_counter() - last > 60:
                    last = time.perf_counter()
                    log(f"ranges: group {k + 1}/{len(plan)}, frame {frames}/{total or '?'}, "
                        f"{last - t0:.0f} s")
            del sess
            if len(plan) > 1:
                log(f"ranges: tensor group {k + 1}/{len(plan)} ({len(names)} tensors) over {frames} frames, "
                    f"{time.perf_counter() - t0:.0f} s")
    if not frames:
        raise ValueError("no calibration frames were given")
    for m in methods:
        save_tensors_data(collector.tensors_data(m), caches[m])
    return {"tensors": len(sizes), "bytes_per_frame": int(sum(sizes.values())), "groups": len(plan),
            "frames": frames, "budget_bytes": budget}
