"""Native TensorRT backend: a thin runner over prebuilt plans, memory through cuda-python.

Deserialise once, allocate once (the decoder at its maximum box count), pinned host
mirrors for what crosses to the host, `execute_async_v3` on a CUDA stream per part (so
a decoder call need not queue behind an encoder call running in another thread). The
embedding stays on the GPU between encode and decode; optional CUDA graphs replay the
decoder per box count.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam_edge.contract import BOXES, BOXES_MAX, EMBEDDING, IMAGE, IOU, LOW_RES_LOGITS
from medsam_edge.engines import engine_manifest as em
from medsam_edge.engines.base import Backend
from medsam_edge.engines.trt_build import build_engines, make_logger, summarize
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, load_model_dir

log = logging.getLogger(__name__)
_DECODER_IO = (EMBEDDING, BOXES, LOW_RES_LOGITS, IOU)  # the order _bind_decoder() pairs with buffers


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6 (and 13.x, which dropped the old name)

        return runtime
    except ImportError:
        from cuda import cudart  # older cuda-python 12.x

        return cudart


def _ok(cudart, result, what: str):
    """Unpack a cuda-python (err, *values) tuple; an error becomes a one-line InputError."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        text = cudart.cudaGetErrorString(err)[1]
        raise InputError(f"CUDA {what} failed: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else (values or None)


def current_gpu(device: int = 0) -> em.GpuIdentity:
    cudart = _cudart()
    props = _ok(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.split(b"\0")[0].decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return em.GpuIdentity(name.strip(), int(props.major), int(props.minor))


def usable() -> tuple[bool, str]:
    """(True, what) if tensorrt and cuda-python import and a CUDA device answers; else why not."""
    try:
        import tensorrt as trt
    except Exception as e:  # PyPI's stub package fails with its own errors, not only ImportError
        text = str(e).strip()
        return False, f"tensorrt does not import ({text.splitlines()[0][:160] if text else type(e).__name__})"
    if int(trt.__version__.split(".")[0]) < 10:
        return False, f"TensorRT {trt.__version__} is too old: the runner needs the TensorRT 10+ tensor API"
    try:
        cudart = _cudart()
    except ImportError:
        return False, "cuda-python is not installed (pip install cuda-python); the TensorRT runner needs it"
    try:
        if not _ok(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"):
            return False, "no CUDA device"
        gpu = current_gpu()
    except InputError as e:
        return False, f"no usable CUDA device ({e})"
    return True, f"TensorRT {trt.__version__} on {gpu.name} ({gpu.sm})"


class _Buffer:
    """One device buffer, with a pinned host mirror for tensors that cross to the host."""

    def __init__(self, cudart, shape: tuple, dtype: np.dtype, host: bool) -> None:
        self.cudart, self.dtype = cudart, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.device = int(_ok(cudart, cudart.cudaMalloc(self.nbytes), f"cudaMalloc of {self.nbytes} bytes"))
        self.host, self._host_ptr = None, 0
        if host:
            self._host_ptr = int(_ok(cudart, cudart.cudaMallocHost(self.nbytes), "cudaMallocHost"))
            raw = (ctypes.c_byte * self.nbytes).from_address(self._host_ptr)
            self.host = np.frombuffer(raw, self.dtype).reshape(shape)

    def free(self) -> None:
        if self.device:
            self.cudart.cudaFree(self.device)
        if self._host_ptr:
            self.host = None
            self.cudart.cudaFreeHost(self._host_ptr)
        self.device = self._host_ptr = 0


@dataclass(frozen=True)
class DeviceEmbedding:
    """encode()'s result: an embedding left on the GPU, valid until two more encode() calls."""

    owner: int
    generation: int
    slot: int


class TensorrtBackend(Backend):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, model_dir, precision: str = "fp32", rebuild: bool = True, cuda_graphs: bool = False) -> None:
        import tensorrt as trt

        md = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
        self.precision, self._trt, self._cudart = precision, trt, _cudart()
        self.gpu = current_gpu()
        status = em.find_engines(md, self.gpu, trt.__version__, precision)
        self.rebuilt = None
        if not status.usable:
            if not rebuild:
                raise InputError(
                    f"{md.path}: {status.message()}; rebuild with `medsam-edge build {md.path} --precision {precision}`"
                )
            log.warning("%s: %s; rebuilding in %s", md.path, status.message(), status.path)
            self.rebuilt = status.message()
            old = ((status.manifest or {}).get("engines", {}).get(precision) or {}).get("decoder") or {}
            build_engines(md, (precision,), max_boxes=old.get("profile", {}).get(BOXES, {}).get("max", [BOXES_MAX])[0])
            status = em.find_engines(md, self.gpu, trt.__version__, precision)
            if not status.usable:
                raise InputError(f"{md.path}: {status.message()} even after a rebuild")
        self.engine_dir: Path = status.path
        entries = status.manifest["engines"][precision]
        self.max_boxes = int(entries["decoder"]["profile"][BOXES]["max"][0])
        self._logger = make_logger(trt)  # must outlive the runtime and engines
        runtime = trt.Runtime(self._logger)
        self._enc, self._enc_ctx = self._deserialize(runtime, entries["encoder"], (IMAGE, EMBEDDING))
        self._dec, self._dec_ctx = self._deserialize(runtime, entries["decoder"], _DECODER_IO)
        self._buffers: list[_Buffer] = []
        self._streams = [_ok(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate") for _ in range(2)]
        self._allocate()
        self._generation, self._last_n = 0, 0
        self.cuda_graphs, self._graphs = cuda_graphs, {}
        log.info("tensorrt: %s %s engines from %s", self.gpu.name, precision, self.engine_dir)

    def _deserialize(self, runtime, entry: dict, names: tuple):
        path = self.engine_dir / entry["plan"]
        engine = runtime.deserialize_cuda_engine(em.read_plan(self.engine_dir, entry))
        if engine is None:
            raise InputError(
                f"{path}: TensorRT {self._trt.__version__} cannot deserialize it ({summarize(self._logger.errors)}); "
                f"rebuild with `medsam-edge build {self.engine_dir.parent.parent} --precision {self.precision}`"
            )
        found = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if found != set(names):
            raise InputError(f"{path}: engine tensors {sorted(found)}, expected {sorted(names)}; rebuild it")
        return engine, engine.create_execution_context()

    def _dtype(self, engine, name: str) -> np.dtype:
        return np.dtype(self._trt.nptype(engine.get_tensor_dtype(name)))

    def _buffer(self, engine, name: str, shape: tuple, host: bool) -> _Buffer:
        b = _Buffer(self._cudart, shape, self._dtype(engine, name), host)
        self._buffers.append(b)
        return b

    def _allocate(self) -> None:
        enc, dec, m = self._enc, self._dec, self.max_boxes
        self._image = self._buffer(enc, IMAGE, tuple(enc.get_tensor_shape(IMAGE)), host=True)
        emb_shape = tuple(enc.get_tensor_shape(EMBEDDING))
        # Two encoder outputs in turn, so an embedding stays valid while the next one is computed.
        self._emb = [self._buffer(enc, EMBEDDING, emb_shape, host=False) for _ in range(2)]
        if self._dtype(enc, EMBEDDING) != self._dtype(dec, EMBEDDING):
            raise InputError(f"{self.engine_dir}: encoder output and decoder input embedding types differ; rebuild")
        self._dec_emb = self._buffer(dec, EMBEDDING, emb_shape, host=False)
        self._boxes = self._buffer(dec, BOXES, (m, 4), host=True)
        per_box = {n: tuple(dec.get_tensor_shape(n))[1:] for n in (LOW_RES_LOGITS, IOU)}
        self._logits = self._buffer(dec, LOW_RES_LOGITS, (m, *per_box[LOW_RES_LOGITS]), host=True)
        self._iou = self._buffer(dec, IOU, (m, *per_box[IOU]), host=True)
        self._enc_ctx.set_tensor_address(IMAGE, self._image.device)
        self._bind_decoder(self._dec_ctx)

    def _bind_decoder(self, ctx) -> None:
        for name, b in zip(_DECODER_IO, (self._dec_emb, self._boxes, self._logits, self._iou)):
            ctx.set_tensor_address(name, b.device)

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream) -> None:
        k = getattr(self._cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")
        _ok(self._cudart, self._cudart.cudaMemcpyAsync(dst, src, nbytes, k, stream), f"cudaMemcpyAsync {kind}")

    def _sync(self, stream) -> None:
        _ok(self._cudart, self._cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def _execute(self, ctx, stream, part: str) -> None:
        if not ctx.execute_async_v3(int(stream)):
            raise InputError(f"TensorRT {part} execution failed ({summarize(self._logger.errors)})")

    def encode(self, image: np.ndarray) -> DeviceEmbedding:
        image = np.asarray(image)
        if image.shape != self._image.host.shape:
            raise InputError(f"image of shape {image.shape}: this encoder engine takes {self._image.host.shape}")
        stream, slot = self._streams[0], self._generation % 2
        np.copyto(self._image.host, image, casting="same_kind")
        self._copy(self._image.device, self._image.host.ctypes.data, self._image.nbytes, "HostToDevice", stream)
        self._enc_ctx.set_tensor_address(EMBEDDING, self._emb[slot].device)
        self._execute(self._enc_ctx, stream, "encoder")
        self._sync(stream)
        self._generation += 1
        return DeviceEmbedding(id(self), self._generation - 1, slot)

    def _embedding_ptr(self, embedding) -> int:
        if not isinstance(embedding, DeviceEmbedding) or embedding.owner != id(self):
            raise InputError("tensorrt decode() takes the embedding returned by this backend's encode()")
        if self._generation - 1 - embedding.generation > 1:
            raise InputError("this embedding was overwritten by two later encode() calls; encode the frame again")
        return self._emb[embedding.slot].device

    def decode(self, embedding, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)
        stream, n, m = self._streams[1], len(boxes), self.max_boxes
        logits = np.empty((n,) + self._logits.host.shape[1:], np.float32)
        iou = np.empty((n,) + self._iou.host.shape[1:], np.float32)
        if n == 0:
            return logits, iou
        src = self._embedding_ptr(embedding)
        self._copy(self._dec_emb.device, src, self._dec_emb.nbytes, "DeviceToDevice", stream)
        # More boxes than the profile's maximum run in chunks rather than failing.
        for start in range(0, n, m):
            k = min(m, n - start)
            np.copyto(self._boxes.host[:k], boxes[start : start + k], casting="same_kind")
            bx = self._boxes
            self._copy(bx.device, bx.host.ctypes.data, bx.nbytes * k // m, "HostToDevice", stream)
            self._run_decoder(k, stream)
            for b in (self._logits, self._iou):
                self._copy(b.host.ctypes.data, b.device, b.nbytes * k // m, "DeviceToHost", stream)
            self._sync(stream)
            logits[start : start + k] = self._logits.host[:k]
            iou[start : start + k] = self._iou.host[:k]
        return logits, iou

    def _run_decoder(self, k: int, stream) -> None:
        if self.cuda_graphs:
            graph = self._graphs.get(k) or self._capture(k, stream)
            if graph is not None:
                _ok(self._cudart, self._cudart.cudaGraphLaunch(graph[2], stream), "cudaGraphLaunch")
                return
        if k != self._last_n:
            self._dec_ctx.set_input_shape(BOXES, (k, 4))
            self._last_n = k
        self._execute(self._dec_ctx, stream, "decoder")

    def _capture(self, k: int, stream):
        """Capture the decoder for k boxes in its own context (a graph fixes shapes and addresses)."""
        cudart = self._cudart
        ctx = self._dec.create_execution_context()
        self._bind_decoder(ctx)
        ctx.set_input_shape(BOXES, (k, 4))
        # One ordinary run first: TensorRT does shape-dependent setup on the first enqueue,
        # which must not end up inside the graph.
        self._execute(ctx, stream, "decoder")
        self._sync(stream)
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        try:
            _ok(cudart, cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
            try:
                ok = ctx.execute_async_v3(int(stream))
            finally:  # the stream must leave capture mode whatever happened
                graph = _ok(cudart, cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            if not ok:
                raise InputError(f"decoder execution failed during capture for {k} boxes")
            exec_ = _ok(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except Exception as e:  # some engines cannot be captured; plain execution still works
            log.warning("tensorrt: CUDA graph capture failed (%s); the decoder runs without graphs", e)
            self.cuda_graphs = False
            return None
        self._graphs[k] = (ctx, graph, exec_)
        return self._graphs[k]

    def embedding_to_numpy(self, embedding) -> np.ndarray:
        b = self._dec_emb
        out = np.empty(tuple(self._enc.get_tensor_shape(EMBEDDING)), b.dtype)
        self._copy(out.ctypes.data, self._embedding_ptr(embedding), b.nbytes, "DeviceToHost", self._streams[1])
        self._sync(self._streams[1])
        return out.astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "tensorrt": self._trt.__version__,
            "gpu": f"{self.gpu.name} ({self.gpu.sm})",
            "engines": str(self.engine_dir),
            "max_boxes": self.max_boxes,
            "cuda_graphs": self.cuda_graphs,
            "rebuilt": self.rebuilt,
        }

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None or not getattr(self, "_streams", None):
            return
        for s in self._streams:
            cudart.cudaStreamSynchronize(s)
        for _, graph, exec_ in self._graphs.values():
            cudart.cudaGraphExecDestroy(exec_)
            cudart.cudaGraphDestroy(graph)
        self._graphs = {}
        self._enc_ctx = self._dec_ctx = None  # contexts go before the memory they point at
        for b in self._buffers:
            b.free()
        for s in self._streams:
            cudart.cudaStreamDestroy(s)
        self._streams = []
