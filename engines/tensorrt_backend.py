"""Native TensorRT backend: a thin runner over prebuilt plans, memory through cuda-python.

The runner deserialises and runs; it never builds. Missing or stale engines are refused
with StaleEngines, and the decision to rebuild instead is made, visibly, by
select.open_backend (its `rebuild` policy).

Deserialise once, allocate once (the decoder at its profile's maxima), pinned host
mirrors for what crosses to the host, `execute_async_v3` on a non-blocking CUDA stream
per part (so a decoder call need not queue behind an encoder call running in another
thread, and the legacy default stream cannot serialise with them or break a graph
capture). The embedding stays on the GPU between encode and decode; optional CUDA graphs
replay the decoder per prompt shape, each in its own execution context (a graph fixes
its context's shapes), all contexts sharing one block of device memory since they only
ever run one after another on the decoder stream.

Embeddings live in a ring of `slots` device buffers. A slot being written is marked
invalid before the encoder touches it, and the encoder stream waits on a CUDA event the
decoder stream records after its last copy out of that slot, so an encode in flight can
neither hand out nor overwrite a slot the decoder is reading (real-time mode runs both
at once). An embedding whose slot was taken over is refused with ExpiredEmbedding.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsam_edge.contract import EMBEDDING, IMAGE, IOU, LOW_RES_LOGITS, POINT_COORDS, POINT_LABELS
from medsam_edge.engines import engine_manifest as em
from medsam_edge.engines.base import Backend, ExpiredEmbedding
from medsam_edge.engines.cuda import Buffer, current_gpu, dims, ok, runtime
from medsam_edge.engines.tensorrt_status import StaleEngines
from medsam_edge.engines.trt_build import errors_line, make_logger
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, load_model_dir

if TYPE_CHECKING:  # the stubs (tensorrt-stubs) check these calls; nothing imports tensorrt at load time
    import tensorrt as trt

log = logging.getLogger(__name__)
_DECODER_IO = (EMBEDDING, POINT_COORDS, POINT_LABELS, LOW_RES_LOGITS, IOU)  # as _bind_decoder() pairs them
DEFAULT_SLOTS = 3
# Captured decoder graphs kept at most (one per (prompts, points) shape seen); past this the
# decoder runs without a graph rather than growing without bound.
MAX_GRAPHS = 32


@dataclass(frozen=True)
class DeviceEmbedding:
    """encode()'s result: an embedding left on the GPU, valid while its slot holds its generation."""

    owner: int
    generation: int
    slot: int


class TensorrtBackend(Backend):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, model_dir, precision: str = "fp32", cuda_graphs: bool = False,
                 slots: int = DEFAULT_SLOTS) -> None:
        """Open the prebuilt `precision` engines of this machine; StaleEngines if there are
        none or they are stale (select.open_backend decides whether to rebuild)."""
        if slots < 2:
            raise InputError(f"slots {slots}: the TensorRT backend needs at least 2 embedding slots")
        import tensorrt as trt

        md = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
        self.precision, self._trt, self._cudart = precision, trt, runtime()
        self._buffers: list[Buffer] = []
        self._streams: list = []
        self._events: list = []
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._contexts: list = []
        try:
            self._open(md, slots, cuda_graphs)
        except BaseException:
            self.close()  # whatever was allocated before the failure goes back
            raise

    def _open(self, md: ModelDir, slots: int, cuda_graphs: bool) -> None:
        import tensorrt as trt

        self.gpu = current_gpu()
        status = em.find_engines(md, self.gpu, trt.__version__, self.precision)
        if not status.usable:
            raise StaleEngines(f"{md.path}: {status.message()}; build them with `medsam-edge build {md.path} "
                               f"--precision {self.precision}` (or open with rebuild='if-stale')", status)
        self.rebuilt: str | None = None  # open_backend says when it rebuilt first
        self.engine_dir: Path = status.path
        assert status.manifest is not None
        entries = status.manifest["engines"][self.precision]
        top = em.profile_maxima(entries["decoder"]["profile"])
        self.max_prompts, self.max_points = top["num_prompts"], top["num_points"]
        self.embedding_slots = slots
        self._logger = make_logger(trt)  # must outlive the runtime and engines
        runtime = trt.Runtime(self._logger)
        self._enc = self._deserialize(runtime, entries["encoder"], (IMAGE, EMBEDDING))
        self._dec = self._deserialize(runtime, entries["decoder"], _DECODER_IO)
        cudart = self._cudart
        # Non-blocking: the legacy default stream would serialise with these and invalidate
        # a graph capture in progress on the decoder stream.
        self._streams = [ok(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                             "cudaStreamCreateWithFlags") for _ in range(2)]
        self._events = [ok(cudart, cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming),
                            "cudaEventCreateWithFlags") for _ in range(slots)]
        self._enc_ctx = self._enc.create_execution_context()
        # One block of activation memory for every decoder context (plain and captured).
        size = getattr(self._dec, "device_memory_size_v2", None) or self._dec.device_memory_size
        self._dec_memory = self._buffer_bytes(max(int(size), 256))
        self._dec_ctx = self._decoder_context()
        self._allocate()
        self._lock = threading.Lock()  # slot state and the event ordering around it
        self._enc_lock = threading.RLock()  # one encode at a time (shared image buffer and context)
        self._dec_lock = threading.RLock()  # one decode at a time (shared host mirrors and context)
        self._slot_generation = [-1] * slots  # -1: empty, or being written
        self._generation = 0
        self._last_shape: tuple[int, int] | None = None
        self.cuda_graphs = cuda_graphs
        log.info("tensorrt: %s %s engines from %s", self.gpu.name, self.precision, self.engine_dir)

    def _deserialize(self, runtime: "trt.Runtime", entry: dict, names: tuple) -> "trt.ICudaEngine":
        path = self.engine_dir / entry["plan"]
        engine = runtime.deserialize_cuda_engine(em.read_plan(self.engine_dir, entry))
        if engine is None:
            raise InputError(
                f"{path}: TensorRT {self._trt.__version__} cannot deserialize it ({errors_line(self._logger.errors)}); "
                f"rebuild with `medsam-edge build {self.engine_dir.parent.parent} --precision {self.precision}`"
            )
        found = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if found != set(names):
            raise InputError(f"{path}: engine tensors {sorted(found)}, expected {sorted(names)}; rebuild it")
        return engine

    def _decoder_context(self) -> "trt.IExecutionContext":
        """A decoder context on the shared activation memory (USER_MANAGED allocation)."""
        import tensorrt as trt

        dec = self._dec
        ctx = dec.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise InputError(f"TensorRT could not create a decoder context ({errors_line(self._logger.errors)})")
        mem = self._dec_memory
        if hasattr(ctx, "set_device_memory"):  # 10.1+; the device_memory property is gone in later 10.x
            ctx.set_device_memory(mem.device, mem.nbytes)
        else:
            setattr(ctx, "device_memory", mem.device)
        self._contexts.append(ctx)
        return ctx

    def _dtype(self, engine: "trt.ICudaEngine", name: str) -> np.dtype:
        return np.dtype(self._trt.nptype(engine.get_tensor_dtype(name)))

    def _buffer(self, engine, name: str, shape: tuple, host: bool) -> Buffer:
        b = Buffer(self._cudart, shape, self._dtype(engine, name), host)
        self._buffers.append(b)
        return b

    def _buffer_bytes(self, nbytes: int) -> Buffer:
        b = Buffer(self._cudart, (nbytes,), np.dtype(np.uint8), host=False)
        self._buffers.append(b)
        return b

    def _allocate(self) -> None:
        enc, dec, m, p = self._enc, self._dec, self.max_prompts, self.max_points
        self._image = self._buffer(enc, IMAGE, dims(enc.get_tensor_shape(IMAGE)), host=True)
        emb_shape = dims(enc.get_tensor_shape(EMBEDDING))
        self._emb = [self._buffer(enc, EMBEDDING, emb_shape, host=False) for _ in range(self.embedding_slots)]
        if self._dtype(enc, EMBEDDING) != self._dtype(dec, EMBEDDING):
            raise InputError(f"{self.engine_dir}: encoder output and decoder input embedding types differ; rebuild")
        # The decoder reads its own copy: a slot is free for the next encode once copied.
        self._dec_emb = self._buffer(dec, EMBEDDING, emb_shape, host=False)
        self._coords = self._buffer(dec, POINT_COORDS, (m, p, 2), host=True)
        self._labels = self._buffer(dec, POINT_LABELS, (m, p), host=True)
        per_prompt = {n: dims(dec.get_tensor_shape(n))[1:] for n in (LOW_RES_LOGITS, IOU)}
        self._logits = self._buffer(dec, LOW_RES_LOGITS, (m, *per_prompt[LOW_RES_LOGITS]), host=True)
        self._iou = self._buffer(dec, IOU, (m, *per_prompt[IOU]), host=True)
        self._enc_ctx.set_tensor_address(IMAGE, self._image.device)
        self._bind_decoder(self._dec_ctx)

    def _bind_decoder(self, ctx: "trt.IExecutionContext") -> None:
        for name, b in zip(_DECODER_IO, (self._dec_emb, self._coords, self._labels, self._logits, self._iou)):
            ctx.set_tensor_address(name, b.device)

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream) -> None:
        k = getattr(self._cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")
        ok(self._cudart, self._cudart.cudaMemcpyAsync(dst, src, nbytes, k, stream), f"cudaMemcpyAsync {kind}")

    def _sync(self, stream) -> None:
        ok(self._cudart, self._cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def _execute(self, ctx: "trt.IExecutionContext", stream, part: str) -> None:
        if not ctx.execute_async_v3(int(stream)):
            raise InputError(f"TensorRT {part} execution failed ({errors_line(self._logger.errors)})")

    def encode(self, image: np.ndarray) -> DeviceEmbedding:
        image = np.asarray(image)
        host = self._image.mirror
        if image.shape != host.shape:
            raise InputError(f"image of shape {image.shape}: this encoder engine takes {host.shape}")
        stream = self._streams[0]
        with self._enc_lock:
            with self._lock:
                generation = self._generation
                self._generation += 1
                slot = generation % self.embedding_slots
                # From here no decode may start reading the slot, and the overwrite below
                # waits for every copy out of it that a decode has already queued.
                self._slot_generation[slot] = -1
                ok(self._cudart, self._cudart.cudaStreamWaitEvent(stream, self._events[slot], 0),
                    "cudaStreamWaitEvent")
            np.copyto(host, image, casting="same_kind")
            self._copy(self._image.device, host.ctypes.data, self._image.nbytes, "HostToDevice", stream)
            self._enc_ctx.set_tensor_address(EMBEDDING, self._emb[slot].device)
            self._execute(self._enc_ctx, stream, "encoder")
            self._sync(stream)
            with self._lock:
                self._slot_generation[slot] = generation
        return DeviceEmbedding(id(self), generation, slot)

    @property
    def streams(self) -> list:
        """The CUDA streams (encoder, decoder) this backend launches on, for checks of their flags."""
        return list(self._streams)

    def embedding_valid(self, embedding) -> bool:
        return (isinstance(embedding, DeviceEmbedding) and embedding.owner == id(self)
                and self._slot_generation[embedding.slot] == embedding.generation)

    def _copy_out(self, embedding, dst: int, stream) -> None:
        """Queue a copy of the embedding's slot on `stream`, or refuse an expired one."""
        if not isinstance(embedding, DeviceEmbedding) or embedding.owner != id(self):
            raise InputError("tensorrt decode() takes the embedding returned by this backend's encode()")
        with self._lock:
            if not self.embedding_valid(embedding):
                raise ExpiredEmbedding(f"embedding {embedding.generation} was overwritten by a later encode() "
                                       f"({self.embedding_slots} slots); encode the frame again")
            self._copy(dst, self._emb[embedding.slot].device, self._dec_emb.nbytes, "DeviceToDevice", stream)
            ok(self._cudart, self._cudart.cudaEventRecord(self._events[embedding.slot], stream), "cudaEventRecord")

    def decode(self, embedding, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, points = np.shape(labels)
        coords = np.ascontiguousarray(coords, self._coords.dtype).reshape(n, points, 2)
        labels = np.ascontiguousarray(labels, self._labels.dtype)
        stream, m = self._streams[1], self.max_prompts
        logits_host, iou_host = self._logits.mirror, self._iou.mirror
        logits = np.empty((n,) + logits_host.shape[1:], np.float32)
        iou = np.empty((n,) + iou_host.shape[1:], np.float32)
        if n == 0:
            return logits, iou
        if not 1 <= points <= self.max_points:
            raise InputError(f"{points} tokens per prompt: these engines take 1 to {self.max_points}; "
                             f"rebuild with `medsam-edge build --max-points {points}`")
        with self._dec_lock:
            self._copy_out(embedding, self._dec_emb.device, stream)
            # More prompts than the profile's maximum run in chunks rather than failing.
            for start in range(0, n, m):
                k = min(m, n - start)
                for buf, src in ((self._coords, coords), (self._labels, labels)):
                    flat = buf.mirror.reshape(-1)
                    part = src[start:start + k].reshape(-1)
                    flat[:part.size] = part
                    self._copy(buf.device, buf.mirror.ctypes.data, part.nbytes, "HostToDevice", stream)
                self._run_decoder(k, points, stream)
                for b in (self._logits, self._iou):
                    self._copy(b.mirror.ctypes.data, b.device, b.nbytes * k // m, "DeviceToHost", stream)
                self._sync(stream)
                logits[start : start + k] = logits_host[:k]
                iou[start : start + k] = iou_host[:k]
        return logits, iou

    def _run_decoder(self, k: int, points: int, stream) -> None:
        shape = (k, points)
        if self.cuda_graphs:
            graph = self._graphs.get(shape)
            if graph is None and len(self._graphs) < MAX_GRAPHS:
                graph = self._capture(shape, stream)
            if graph is not None:
                ok(self._cudart, self._cudart.cudaGraphLaunch(graph[2], stream), "cudaGraphLaunch")
                return
        if shape != self._last_shape:
            self._set_shape(self._dec_ctx, shape)
            self._last_shape = shape
        self._execute(self._dec_ctx, stream, "decoder")

    @staticmethod
    def _set_shape(ctx: "trt.IExecutionContext", shape: tuple[int, int]) -> None:
        if not (ctx.set_input_shape(POINT_COORDS, (*shape, 2)) and ctx.set_input_shape(POINT_LABELS, shape)):
            raise InputError(f"{shape[0]} prompts x {shape[1]} points are outside the decoder engine's profile")

    def _capture(self, shape: tuple[int, int], stream):
        """Capture the decoder for (prompts, points) in its own context (a graph fixes its
        context's shapes and addresses), on the shared activation memory."""
        cudart = self._cudart
        try:
            ctx = self._decoder_context()
            self._bind_decoder(ctx)
            self._set_shape(ctx, shape)
            # One ordinary run first: TensorRT does shape-dependent setup on the first
            # enqueue, which must not end up inside the graph.
            self._execute(ctx, stream, "decoder")
            self._sync(stream)
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            ok(cudart, cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
            try:
                ran = ctx.execute_async_v3(int(stream))
            finally:  # the stream must leave capture mode whatever happened
                graph = ok(cudart, cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            if not ran:
                raise InputError(f"decoder execution failed during capture for {shape} prompts x points")
            exec_ = ok(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except Exception as e:  # some engines cannot be captured; plain execution still works
            log.warning("tensorrt: CUDA graph capture failed (%s); the decoder runs without graphs", e)
            self.cuda_graphs = False
            return None
        self._graphs[shape] = (ctx, graph, exec_)
        return self._graphs[shape]

    def embedding_to_numpy(self, embedding) -> np.ndarray:
        out = np.empty(dims(self._enc.get_tensor_shape(EMBEDDING)), self._dec_emb.dtype)
        stream = self._streams[1]
        with self._dec_lock:
            self._copy_out(embedding, self._dec_emb.device, stream)
            self._copy(out.ctypes.data, self._dec_emb.device, self._dec_emb.nbytes, "DeviceToHost", stream)
            self._sync(stream)
        return out.astype(np.float32, copy=False)

    def sync(self) -> None:
        for s in self._streams:
            self._sync(s)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "tensorrt": self._trt.__version__,
            "gpu": f"{self.gpu.name} ({self.gpu.sm})",
            "engines": str(self.engine_dir),
            "max_prompts": self.max_prompts,
            "max_points": self.max_points,
            "embedding_slots": self.embedding_slots,
            "cuda_graphs": self.cuda_graphs,
            "captured_shapes": sorted(self._graphs),
            "rebuilt": self.rebuilt,
        }

    def close(self) -> None:
        """Free what exists; safe after an __init__ that stopped half-way, and twice."""
        cudart: Any = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for s in getattr(self, "_streams", []):
            cudart.cudaStreamSynchronize(s)
        for _, graph, exec_ in getattr(self, "_graphs", {}).values():
            cudart.cudaGraphExecDestroy(exec_)
            cudart.cudaGraphDestroy(graph)
        self._graphs = {}
        # Contexts go before the memory they point at, engines after their contexts.
        self._contexts = []
        for name in ("_enc_ctx", "_dec_ctx", "_enc", "_dec"):
            setattr(self, name, None)
        for b in getattr(self, "_buffers", []):
            b.free()
        self._buffers = []
        for e in getattr(self, "_events", []):
            cudart.cudaEventDestroy(e)
        self._events = []
        for s in getattr(self, "_streams", []):
            cudart.cudaStreamDestroy(s)
        self._streams = []
