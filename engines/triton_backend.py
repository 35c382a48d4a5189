"""Triton client backend: `--backend triton://HOST:PORT[/MODEL]` over gRPC.

The server's stream model (serving/stream_model.py, written by `medsam-edge triton`)
keeps this client's embeddings: encode() sends the image and gets back a handle naming
the stream and the embedding's generation; decode() sends only the handle and the
prompt tokens. The server keeps `embedding_slots` embeddings per stream and fewer
streams than it has memory for, so a handle can expire there (evicted, idle, server
restarted); decode() then raises ExpiredEmbedding and the runtime encodes again.

The stream model is decoupled (its answers come on a gRPC stream). Each calling thread
gets its own connection and stream with at most one request in flight, so an answer,
or an error that Triton sends without a request id, always belongs to the request
waiting on that thread (real-time mode encodes and decodes from two threads at once).
tritonclient is imported only when a backend is opened.
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from medsam_edge.contract import IMAGE, IOU, LOW_RES_LOGITS, POINT_COORDS, POINT_LABELS
from medsam_edge.engines import triton_protocol as P
from medsam_edge.engines.base import Backend, ExpiredEmbedding
from medsam_edge.errors import InputError, first_line

log = logging.getLogger(__name__)

PREFIX = "triton://"
DEFAULT_PORT = 8001


@dataclass(frozen=True)
class TritonEmbedding:
    """A handle on an embedding kept by the server: the stream and its generation there."""

    stream_id: int
    generation: int


def parse_url(name: str) -> tuple[str, str]:
    """'triton://host:port[/model]' -> ('host:port', model)."""
    rest = name[len(PREFIX):] if name.startswith(PREFIX) else name
    hostport, _, model = rest.partition("/")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", str(DEFAULT_PORT))
    if not host or not port.isdigit() or "/" in model:
        raise InputError(f"--backend {name!r}: expected triton://HOST:PORT[/MODEL], e.g. triton://127.0.0.1:8001/medsam")
    if not port.isascii() or not 0 < int(port) <= 65535:  # gRPC would wrap 70001 round to 4465
        raise InputError(f"--backend {name!r}: port {port} is not a TCP port (1 to 65535)")
    return f"{host}:{port}", model or P.DEFAULT_NAME


class _Lane:
    """One thread's connection and response stream; one request at a time."""

    def __init__(self, grpcclient, url: str) -> None:
        self._grpc, self._url = grpcclient, url
        self.client = grpcclient.InferenceServerClient(url)
        self.answers: queue.Queue = queue.Queue()
        self.streaming = False

    def start(self) -> None:
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))
        self.streaming = True

    def reset(self) -> None:
        """Drop the stream and the connection (after a timeout or a broken connection): a gRPC
        channel that saw its server die waits out a reconnect backoff, a new one connects at once
        to a restarted server."""
        self.close()
        self.client = self._grpc.InferenceServerClient(self._url)
        self.answers = queue.Queue()

    def close(self) -> None:
        if self.streaming:
            try:
                self.client.stop_stream(cancel_requests=True)
            except Exception:  # a stream whose server died may refuse to stop cleanly
                pass
        self.streaming = False
        try:
            self.client.close()
        except Exception:
            pass


class TritonBackend(Backend):
    name = "triton"
    device = "remote"

    def __init__(self, url: str, model_dir=None, precision: str = "fp32", connect_timeout: float = 5.0,
                 request_timeout: float = 60.0) -> None:
        """url: 'triton://host:port[/model]'. model_dir: the local model directory the runtime
        preprocesses for; the server must run the same model id and input size."""
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as e:
            raise InputError(f"--backend {url}: tritonclient does not import ({e}); pip install 'tritonclient[grpc]'") \
                from None
        self._grpc = grpcclient
        self.url, self.model = parse_url(url)
        self.where = f"{PREFIX}{self.url}/{self.model}"
        self.connect_timeout, self.request_timeout = float(connect_timeout), float(request_timeout)
        self._local = threading.local()
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        admin = self._lane().client
        self._check_live(admin)
        self.params, self.versions, self.server_version = self._inspect(admin)
        self.precision = self.params["precision"]
        self.embedding_slots = int(self.params["slots_per_stream"])
        self.image_shape = (1, 3, int(self.params["input_size"]), int(self.params["input_size"]))
        if model_dir is not None:
            self._match(model_dir, precision)
        # Random 63 bits: streams of unrelated clients never share a cache entry.
        self.stream_id = secrets.randbits(63) or 1
        self._recent: deque[int] = deque(maxlen=self.embedding_slots)

    # -- connection -------------------------------------------------------------------------

    def _lane(self) -> _Lane:
        lane = getattr(self._local, "lane", None)
        if lane is None:
            lane = _Lane(self._grpc, self.url)
            self._local.lane = lane
            with self._lock:
                self._lanes.append(lane)
        return lane

    def _check_live(self, client) -> None:
        try:
            live = client.is_server_live(client_timeout=self.connect_timeout)
        except Exception as e:
            raise InputError(f"{self.where}: server not reachable within {self.connect_timeout:g} s "
                             f"({first_line(e, 300)}); start tritonserver or check HOST:PORT") from None
        if not live:
            raise InputError(f"{self.where}: server is up but not live; see its log")

    def _inspect(self, client) -> tuple[dict, list, str]:
        t = self.connect_timeout
        try:
            ready = client.is_model_ready(self.model, client_timeout=t)
            if not ready:
                index = client.get_model_repository_index(as_json=True, client_timeout=t).get("models", [])
                known = {m.get("name"): m for m in index}
                if self.model not in known:
                    raise InputError(f"{self.where}: no model {self.model!r} on this server (it has: "
                                     f"{', '.join(sorted(known)) or 'none'}); write it with `medsam-edge triton`")
                state = known[self.model]
                raise InputError(f"{self.where}: model {self.model!r} is not ready ({state.get('state', '?')}: "
                                 f"{state.get('reason', '') or 'see the server log'})")
            cfg = client.get_model_config(self.model, as_json=True, client_timeout=t)["config"]
            meta = client.get_model_metadata(self.model, as_json=True, client_timeout=t)
            server = client.get_server_metadata(as_json=True, client_timeout=t)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{self.where}: cannot read the model's configuration ({first_line(e, 300)})") from None
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        if "slots_per_stream" not in params:
            raise InputError(f"{self.where}: {self.model!r} is not a medsam-edge stream model (no stream cache "
                             "parameters); name the stream model in the URL")
        return params, list(meta.get("versions", [])), server.get("version", "?")

    def _match(self, model_dir, precision: str) -> None:
        from medsam_edge.manifest import ModelDir, load_model_dir

        md = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
        if self.params.get("model_id") != md.model_id or int(self.params["input_size"]) != md.preprocess.size:
            raise InputError(f"{self.where}: the server runs {self.params.get('model_id')} at "
                             f"{self.params['input_size']}, the model directory {md.path} is {md.model_id} at "
                             f"{md.preprocess.size}; serve the same model or open its directory")
        if precision != self.precision:
            raise InputError(f"{self.where}: the server runs {self.precision}, --precision is {precision}; "
                             f"pass --precision {self.precision} (the server decides the precision)")
        if md.manifest.get("encoder", {}).get("sha256") not in (None, self.params.get("encoder_sha256")) \
                and self.precision == "fp32":
            log.warning("%s: the server's encoder differs from %s's (another checkpoint of %s?)",
                        self.where, md.path, md.model_id)

    # -- requests ---------------------------------------------------------------------------

    def _input(self, name: str, array: np.ndarray, dtype: str):
        t = self._grpc.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    def _call(self, inputs: list, outputs: list[str], what: str):
        if self._closed:
            raise InputError(f"{self.where}: backend closed")
        lane = self._lane()
        if lane.streaming and not lane.answers.empty():
            # Something arrived with nothing asked: the stream broke while idle (server gone).
            lane.reset()
        if not lane.streaming:
            try:
                self._check_live(lane.client)
            except InputError:
                lane.reset()  # the next call tries a fresh connection
                raise
            lane.start()
        request_id = str(next(self._ids))
        try:
            lane.client.async_stream_infer(self.model, inputs, request_id=request_id,
                                           outputs=[self._grpc.InferRequestedOutput(o) for o in outputs])
            result, error = lane.answers.get(timeout=self.request_timeout)
        except queue.Empty:
            lane.reset()
            raise InputError(f"{self.where}: no answer to {what} within {self.request_timeout:g} s; "
                             "the server is overloaded or stuck (see its log)") from None
        except Exception as e:  # tritonclient refuses to enqueue on a stream that already broke
            lane.reset()
            raise InputError(f"{self.where}: the server went away before {what} ({first_line(e, 80)}); "
                             "restart it; a new encode follows once it is back") from None
        if error is not None:
            raise self._error(lane, error, what)
        return result

    def _error(self, lane: _Lane, error, what: str) -> Exception:
        text = first_line(error, 300)
        if P.is_expired(text):
            return ExpiredEmbedding(text)
        # tritonclient gives a gRPC status only when the call itself failed; the model's own
        # errors come as a message on a healthy stream.
        status = error.status() if hasattr(error, "status") else None
        if status or "Socket closed" in text or "unavailable" in text.lower():
            # The connection broke (server killed or restarted): a new stream next time.
            lane.reset()
            return InputError(f"{self.where}: the server went away during {what} ({text}); "
                              "restart it; a new encode follows once it is back")
        if "unexpected shape" in text or "shape mismatch" in text:
            return InputError(f"{self.where}: shape mismatch in {what}: {text}")
        return InputError(f"{self.where}: {what} failed: {text}")

    def encode(self, image: np.ndarray) -> TritonEmbedding:
        """image (1, 3, S, S) float32 -> a handle; the embedding stays on the server."""
        image = np.ascontiguousarray(image, np.float32)
        if image.shape != self.image_shape:
            raise InputError(f"{self.where}: shape mismatch: image {image.shape}, the server's model takes "
                             f"{self.image_shape}")
        ids = np.array([self.stream_id], np.uint64)
        result = self._call([self._input(P.STREAM_ID, ids, "UINT64"), self._input(IMAGE, image, "FP32")],
                            [P.GENERATION], "encode")
        generation = int(result.as_numpy(P.GENERATION).reshape(-1)[0])
        with self._lock:
            self._recent.append(generation)
        return TritonEmbedding(self.stream_id, generation)

    def decode(self, embedding: TritonEmbedding, coords: np.ndarray, labels: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """coords (N, P, 2), labels (N, P) float32 -> logits (N, 1, 256, 256), iou (N, 1); only the
        handle and the prompts travel."""
        if not isinstance(embedding, TritonEmbedding) or embedding.stream_id != self.stream_id:
            raise ValueError("decode() got an embedding that this Triton backend did not encode")
        inputs = [self._input(P.STREAM_ID, np.array([self.stream_id], np.uint64), "UINT64"),
                  self._input(P.OF_GENERATION, np.array([embedding.generation], np.uint64), "UINT64"),
                  self._input(POINT_COORDS, np.ascontiguousarray(coords, np.float32), "FP32"),
                  self._input(POINT_LABELS, np.ascontiguousarray(labels, np.float32), "FP32")]
        try:
            result = self._call(inputs, [LOW_RES_LOGITS, IOU], "decode")
        except ExpiredEmbedding:
            with self._lock:
                if embedding.generation in self._recent:
                    self._recent.remove(embedding.generation)
            raise
        return result.as_numpy(LOW_RES_LOGITS), result.as_numpy(IOU)

    def embedding_valid(self, embedding) -> bool:
        """False once this client knows the server dropped it (a newer encode pushed it out, or a
        decode was told so); the server may also have dropped it unseen: decode() says so."""
        with self._lock:
            return isinstance(embedding, TritonEmbedding) and embedding.generation in self._recent

    def embedding_to_numpy(self, embedding) -> np.ndarray:
        raise InputError(f"{self.where}: the embedding stays on the Triton server; compare masks instead, "
                         "or run the model locally for embedding checks")

    def describe(self) -> dict:
        p = self.params
        return {**super().describe(), "server": self.url, "model": self.model, "server_version": self.server_version,
                "model_versions": self.versions, "model_id": p.get("model_id"), "server_platform": p.get("platform"),
                "stream_id": self.stream_id, "embedding_slots": self.embedding_slots,
                "max_streams": int(p.get("max_streams", 0))}

    def close(self) -> None:
        if self._closed:
            return
        try:  # free this stream's memory on the server; a server already gone has nothing to free
            if self._recent:
                self._call([self._input(P.STREAM_ID, np.array([self.stream_id], np.uint64), "UINT64"),
                            self._input(P.RELEASE, np.array([True]), "BOOL")], [], "release")
        except (InputError, ExpiredEmbedding):
            pass
        self._closed = True
        with self._lock:
            lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.close()
