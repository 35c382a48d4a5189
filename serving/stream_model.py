"""The stream model that runs inside Triton's Python backend: embeddings stay on the server.

One instance (the cache is this process's memory), decoupled: execute() hands each
request to a worker thread and returns, so one stream's decode runs while another
request's encode is still going. A request is an encode, a decode or a release
(engines/triton_protocol.py). The encoder and decoder are either run here through the
project's CPU backend (python platform: engines.onnxruntime_backend.OnnxruntimeBackend
on the ONNX beside this file) or called as Triton models by BLS (onnxruntime and
tensorrt platforms), so a GPU server batches and schedules them itself.

Imported only by Triton's stub (triton_python_backend_utils exists only there).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medsam_edge.contract import (
    EMBEDDING, IMAGE, IOU, LOW_RES_LOGITS, POINT_COORDS, POINT_LABELS, POINTS_RANGE, PROMPTS_RANGE,
)
from medsam_edge.engines import triton_protocol as P
from medsam_edge.serving.cache import Expired, StreamCache


class BadRequest(ValueError):
    """The request is malformed (shapes, missing inputs); str() goes back to the client."""


def check_prompts(coords: np.ndarray, labels: np.ndarray) -> None:
    """coords (N, P, 2), labels (N, P), N and P within the contract's ranges."""
    n_lo, _, n_hi = PROMPTS_RANGE
    p_lo, _, p_hi = POINTS_RANGE
    if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
        raise BadRequest(f"shape mismatch: {POINT_COORDS} {list(coords.shape)} and {POINT_LABELS} "
                         f"{list(labels.shape)}; expected (N, P, 2) and (N, P)")
    n, p = labels.shape
    if not (n_lo <= n <= n_hi and p_lo <= p <= p_hi):
        raise BadRequest(f"shape mismatch: {n} prompts of {p} points; this model takes {n_lo}..{n_hi} prompts "
                         f"of {p_lo}..{p_hi} points")


class LocalEngine:
    """The ONNX files beside model.py, through the project's CPU backend."""

    def __init__(self, vdir: Path, params: dict) -> None:
        from medsam_edge.engines.loaders import open_files
        from medsam_edge.manifest import sha256_file

        for part in ("encoder", "decoder"):
            if sha256_file(vdir / f"{part}.onnx") != params[f"{part}_sha256"]:
                raise RuntimeError(f"{vdir / (part + '.onnx')}: SHA-256 differs from config.pbtxt's; "
                                   "write the repository again with `medsam-edge triton`")
        threads = int(params.get("threads") or 0) or None
        self.backend = open_files(vdir / "encoder.onnx", vdir / "decoder.onnx", "onnxruntime-cpu",
                                  params["precision"], threads, release_memory=False)

    def encode(self, image: np.ndarray):
        return self.backend.encode(image)

    def decode(self, embedding, coords: np.ndarray, labels: np.ndarray):
        return self.backend.decode(embedding, coords, labels)


class BlsEngine:
    """The repository's encoder and decoder models, called inside the server (BLS)."""

    def __init__(self, pb_utils, params: dict) -> None:
        self.pb = pb_utils
        self.encoder, self.decoder = params["encoder_model"], params["decoder_model"]

    def _run(self, model: str, inputs: list, outputs: list):
        resp = self.pb.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=inputs).exec()
        if resp.has_error():
            raise RuntimeError(f"{model}: {resp.error().message()}")
        return [self.pb.get_output_tensor_by_name(resp, o) for o in outputs]

    def encode(self, image: np.ndarray):
        (t,) = self._run(self.encoder, [self.pb.Tensor(IMAGE, image)], [EMBEDDING])
        # A GPU encoder's output stays on the GPU: kept as the tensor, passed on by DLPack.
        return t.as_numpy().copy() if t.is_cpu() else t

    def decode(self, embedding, coords: np.ndarray, labels: np.ndarray):
        emb = (self.pb.Tensor(EMBEDDING, embedding) if isinstance(embedding, np.ndarray)
               else self.pb.Tensor.from_dlpack(EMBEDDING, embedding.to_dlpack()))
        logits, iou = self._run(self.decoder, [emb, self.pb.Tensor(POINT_COORDS, coords),
                                               self.pb.Tensor(POINT_LABELS, labels)], [LOW_RES_LOGITS, IOU])
        return logits.as_numpy(), iou.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        vdir = Path(args["model_repository"]) / args["model_version"]
        self.engine = LocalEngine(vdir, params) if params["platform"] == "python" else BlsEngine(pb_utils, params)
        self.cache = StreamCache(int(params["max_streams"]), int(params["slots_per_stream"]),
                                 float(params["stream_idle_s"]))
        self._encoders = threading.Semaphore(int(params.get("encoder_concurrency") or 1))
        self.pool = ThreadPoolExecutor(int(params.get("workers") or P.WORKERS), thread_name_prefix="medsam-stream")

    def execute(self, requests):
        for request in requests:
            self.pool.submit(self._answer, request)
        return None

    def _answer(self, request) -> None:
        pb = self.pb
        try:
            response = pb.InferenceResponse(output_tensors=self._handle(request))
        except Expired as e:
            response = pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.NOT_FOUND))
        except BadRequest as e:
            response = pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG))
        except Exception as e:  # the client gets one line; the server log keeps the rest
            pb.Logger.log_error(f"medsam-edge stream model: {type(e).__name__}: {e}")
            response = pb.InferenceResponse(error=pb.TritonError(f"{type(e).__name__}: {e}"))
        request.get_response_sender().send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _input(self, request, name: str):
        t = self.pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def _handle(self, request) -> list:
        pb = self.pb
        stream = int(self._input(request, P.STREAM_ID).reshape(-1)[0])
        release = self._input(request, P.RELEASE)
        if release is not None and bool(release.reshape(-1)[0]):
            self.cache.release(stream)
            return []
        image = self._input(request, IMAGE)
        if image is not None:
            with self._encoders:
                embedding = self.engine.encode(np.ascontiguousarray(image, np.float32))
            generation = self.cache.put(stream, embedding)
            return [pb.Tensor(P.GENERATION, np.array([generation], np.uint64))]
        generation, coords, labels = (self._input(request, n) for n in (P.OF_GENERATION, POINT_COORDS, POINT_LABELS))
        if generation is None or coords is None or labels is None:
            raise BadRequest(f"a request carries {IMAGE} (encode), {P.OF_GENERATION} with {POINT_COORDS} and "
                             f"{POINT_LABELS} (decode), or {P.RELEASE}")
        coords = np.ascontiguousarray(coords, np.float32)
        labels = np.ascontiguousarray(labels, np.float32)
        check_prompts(coords, labels)
        embedding = self.cache.get(stream, int(generation.reshape(-1)[0]))
        logits, iou = self.engine.decode(embedding, coords, labels)
        return [pb.Tensor(LOW_RES_LOGITS, np.ascontiguousarray(logits, np.float32)),
                pb.Tensor(IOU, np.ascontiguousarray(iou, np.float32))]

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
