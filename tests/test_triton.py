"""Scale-out on Triton: the repository writer, the stream model and the client backend, against a
real tritonserver (the one the nvidia-pytriton wheel bundles) started here on 127.0.0.1.

One server per repository kind: the session's `server` runs the python-platform repository
(the tiny model and LiteMedSAM side by side), the BLS test its own encoder/decoder-model
repository; the kill/restart test is the only other start (it must kill a server). Every
server is stopped where it was started; every request loop is bounded.
The server runs onnxruntime with one thread so that it shares this machine politely.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.cli import main
from medsam_edge.contract import (
    AXES, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_OUTPUTS, EMBED_DIM, EMBED_HW, box_tokens, encoder_inputs,
    prompt_tokens,
)
from medsam_edge.engines import triton_protocol as P
from medsam_edge.engines.base import ExpiredEmbedding
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, sha256_file
from medsam_edge.serving.cache import Expired, StreamCache
from medsam_edge.serving.repository import RECORD, write_repository

from conftest import ECHO_CHAMBER_BOX

HAVE_SERVER = importlib.util.find_spec("pytriton") is not None
HAVE_CLIENT = importlib.util.find_spec("tritonclient") is not None
_server_missing = pytest.mark.skipif(not (HAVE_SERVER and HAVE_CLIENT),
                                     reason="nvidia-pytriton / tritonclient[grpc] not installed (pip install '.[triton]')")


def needs_server(test):
    """A test against a real tritonserver: skipped without one, and not in `make test-fast`."""
    return pytest.mark.integration(_server_missing(test))


MAX_STREAMS = 3


# -- the stream cache, on its own ------------------------------------------------------------

def test_stream_cache_bounds_streams_and_slots_and_drops_idle_streams():
    now = [0.0]
    cache = StreamCache(max_streams=2, slots=2, idle_s=10, clock=lambda: now[0])
    a1, a2, a3 = (cache.put(1, f"a{i}") for i in range(3))
    assert len({a1, a2, a3}) == 3
    with pytest.raises(Expired, match="keeps its newest 2"):
        cache.get(1, a1)  # the stream's oldest was pushed out by its third encode
    assert cache.get(1, a3) == "a2"
    b = cache.put(2, "b")
    cache.get(1, a3)  # stream 1 is now the most recently used
    cache.put(3, "c")  # a third stream evicts the least recently used: 2
    with pytest.raises(Expired, match="stream unknown") as e:
        cache.get(2, b)
    assert P.is_expired(str(e.value)) and cache.evicted_streams == 1
    now[0] = 11.0
    with pytest.raises(Expired):
        cache.get(1, a3)  # idle for longer than idle_s
    assert len(cache) == 0
    # Two caches (a restarted server) never hand out the same generation.
    assert StreamCache(1, 1, 1).put(1, "x") != StreamCache(1, 1, 1).put(1, "x")


def test_triton_urls_parse_and_bad_ones_are_one_line_errors():
    from medsam_edge.engines.triton_backend import parse_url

    assert parse_url("triton://127.0.0.1:8001/medsam") == ("127.0.0.1:8001", "medsam")
    assert parse_url("triton://localhost:9000") == ("localhost:9000", P.DEFAULT_NAME)
    for bad in ("triton://:8001", "triton://host:port/x", "triton://h:1/a/b"):
        with pytest.raises(InputError, match="triton://HOST:PORT"):
            parse_url(bad)


# -- the repository ----------------------------------------------------------------------------

def _config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _io(cfg, kind: str) -> dict:
    from tritonclient.grpc import model_config_pb2

    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims), getattr(t, "optional", False))
            for t in getattr(cfg, kind)}


def _dims(spec) -> list[int]:
    return [-1 if isinstance(d, str) else d for d in spec.shape]


@pytest.fixture(scope="session")
def python_repo(tiny_model_dir, tmp_path_factory):
    """The repository the session's server runs, written by the command line."""
    out = tmp_path_factory.mktemp("triton") / "repo"
    rc = main(["triton", str(tiny_model_dir.path), "--out", str(out), "--threads", "1",
               "--max-streams", str(MAX_STREAMS), "--slots", "2"])
    assert rc == 0
    return out


@pytest.mark.skipif(not HAVE_CLIENT, reason="tritonclient not installed: its model_config_pb2 parses the configs")
def test_python_repository_configs_parse_and_match_the_contract(python_repo, tiny_model_dir):
    cfg = _config(python_repo / "medsam" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled and cfg.max_batch_size == 0
    from tritonclient.grpc import model_config_pb2

    # One CPU instance: the cache is that process's memory.
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    inputs = _io(cfg, "input")
    assert inputs[P.STREAM_ID] == ("TYPE_UINT64", [1], False)
    assert inputs["image"] == ("TYPE_FP32", _dims(encoder_inputs(1024)[0]), True)
    for spec in DECODER_INPUTS[1:]:
        assert inputs[spec.name] == ("TYPE_FP32", _dims(spec), True)
    assert "embedding" not in inputs  # a request can never carry one
    outputs = _io(cfg, "output")
    for spec in DECODER_OUTPUTS:
        assert outputs[spec.name][:2] == ("TYPE_FP32", _dims(spec))
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    for axis, rng in AXES.items():
        assert params[f"{axis}_range"] == ",".join(map(str, rng))
    assert params["max_streams"] == str(MAX_STREAMS) and params["model_id"] == tiny_model_dir.model_id
    # The version directory holds the exported files, byte for byte, and the record says so.
    record = json.loads((python_repo / RECORD).read_text())
    assert record["stream_cache"]["max_bytes"] == MAX_STREAMS * 2 * EMBED_DIM * EMBED_HW * EMBED_HW * 4
    for rel, digest in record["files"].items():
        assert sha256_file(python_repo / rel) == digest, rel
    assert sha256_file(python_repo / "medsam/1/encoder.onnx") == tiny_model_dir.manifest["encoder"]["sha256"]
    assert params["encoder_sha256"] == tiny_model_dir.manifest["encoder"]["sha256"]
    assert json.loads((python_repo / "medsam/1/model_manifest.json").read_text()) == tiny_model_dir.manifest


@pytest.mark.skipif(not HAVE_CLIENT, reason="tritonclient not installed: its model_config_pb2 parses the configs")
def test_gpu_repositories_have_encoder_and_decoder_models_from_the_contract(tiny_model_dir, tmp_path):
    from medsam_edge.engines import engine_manifest as em

    md = ModelDir(tmp_path / "m", tiny_model_dir.manifest)
    shutil.copytree(tiny_model_dir.path, md.path)
    # A stand-in engine set: the writer treats plans as opaque bytes with recorded checksums.
    gpu = em.GpuIdentity("NVIDIA H100 80GB HBM3", 9, 0)
    engines = em.engine_dir(md.path, gpu, "10.13.0")
    engines.mkdir(parents=True)
    manifest = em.new_manifest(md, gpu, "10.13.0")
    for part in em.PARTS:
        (engines / em.plan_name(part, "fp32")).write_bytes(part.encode() * 1000)
        em.record(manifest, "fp32", part, md.onnx(part), engines / em.plan_name(part, "fp32"), {}, 1.0)
    em.save(engines, manifest)
    for platform, head, filename in (("onnxruntime", "onnxruntime_onnx", "model.onnx"),
                                     ("tensorrt", "tensorrt_plan", "model.plan")):
        repo = write_repository(md, tmp_path / platform, platform, instances=2)
        enc, dec = _config(repo / "medsam_encoder/config.pbtxt"), _config(repo / "medsam_decoder/config.pbtxt")
        assert (enc.platform, dec.platform) == (head, head)
        assert (repo / "medsam_encoder/1" / filename).is_file() and (repo / "medsam_decoder/1" / filename).is_file()
        assert _io(enc, "input") == {"image": ("TYPE_FP32", _dims(encoder_inputs(1024)[0]), False)}
        assert _io(enc, "output") == {"embedding": ("TYPE_FP32", _dims(ENCODER_OUTPUTS[0]), False)}
        assert _io(dec, "input") == {s.name: ("TYPE_FP32", _dims(s), False) for s in DECODER_INPUTS}
        assert [g.count for g in enc.instance_group] == [2]
        stream = _config(repo / "medsam/config.pbtxt")
        params = {k: v.string_value for k, v in stream.parameters.items()}
        assert (params["encoder_model"], params["decoder_model"]) == ("medsam_encoder", "medsam_decoder")
        assert not (repo / "medsam/1/encoder.onnx").exists()  # the stream model calls the others by BLS
    assert (tmp_path / "tensorrt/medsam_encoder/1/model.plan").read_bytes() == b"encoder" * 1000
    # An encoder exported with a batch axis would get Triton's dynamic batcher (today's has batch 1).
    from medsam_edge.serving.config import encoder_config

    batched = tmp_path / "batched.pbtxt"
    batched.write_text(encoder_config("e", "onnxruntime", 1024, 1, max_batch=8))
    cfg = _config(batched)
    assert cfg.max_batch_size == 8 and list(cfg.dynamic_batching.preferred_batch_size) == [8]
    assert _io(cfg, "input")["image"][1] == [3, 1024, 1024]
    # A changed plan is refused before it is copied, as is a changed ONNX file.
    (engines / "decoder.fp32.plan").write_bytes(b"corrupt")
    with pytest.raises(InputError, match="decoder.fp32.plan"):
        write_repository(md, tmp_path / "bad_plan", "tensorrt")
    (md.path / "encoder.onnx").write_bytes(b"not the exported encoder")
    with pytest.raises(InputError, match="SHA-256"):
        write_repository(md, tmp_path / "bad_onnx", "python")
    assert not (tmp_path / "bad_onnx").exists()  # nothing half-written


def test_repository_options_are_checked(tiny_model_dir, tmp_path, capsys):
    assert main(["triton", str(tiny_model_dir.path), "--out", str(tmp_path / "r"), "--platform", "tensorrt",
                 "--precision", "int8dyn"]) == 2
    assert "does not run on --platform tensorrt" in capsys.readouterr().err
    assert main(["triton", str(tiny_model_dir.path), "--out", str(tmp_path / "r"), "--max-streams", "0"]) == 2
    assert main(["triton", str(tiny_model_dir.path), "--out", str(tmp_path / "r"), "--platform", "tensorrt"]) == 2
    assert "engine set" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# -- a real server -------------------------------------------------------------------------------

LITE = "lite"  # LiteMedSAM's stream model, beside the tiny model's "medsam" on the same server


@pytest.fixture(scope="session")
def server_repo(python_repo, lite_model_dir, tmp_path_factory):
    """One `--platform python` repository with two stream models: the tiny model's (as the
    command line wrote it) and LiteMedSAM's under another name, so one server serves both."""
    root = tmp_path_factory.mktemp("triton-both")
    repo = root / "repo"
    shutil.copytree(python_repo, repo)
    lite = write_repository(lite_model_dir, root / "lite", name=LITE, threads=1)
    shutil.copytree(lite / LITE, repo / LITE)
    return repo


@pytest.fixture(scope="session")
def server(server_repo):
    """The session's one server for the python repository kind (started once, ~10-90 s)."""
    if not (HAVE_SERVER and HAVE_CLIENT):
        pytest.skip("nvidia-pytriton / tritonclient[grpc] not installed (pip install '.[triton]')")
    from medsam_edge.serving.local_server import start

    srv = start(server_repo, ready_timeout=90)
    yield srv
    srv.stop()
    assert srv.process.poll() is not None


def _backend(url: str, md, **kw):
    from medsam_edge.engines.triton_backend import TritonBackend

    return TritonBackend(f"triton://{url}/medsam", md, **kw)


@pytest.fixture(scope="session")
def local(tiny_model_dir):
    from medsam_edge.engines.select import open_backend

    with open_backend(tiny_model_dir, "onnxruntime-cpu", threads=1) as b:
        yield b


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.random((1, 3, 1024, 1024), dtype=np.float32) for _ in range(n)]


BOXES = box_tokens([[100, 120, 600, 700], [300, 200, 900, 800]])


@needs_server
def test_masks_through_triton_equal_in_process_masks(server, tiny_model_dir, local, echo_frames):
    from medsam_edge.engines.select import open_backend
    from medsam_edge.runtime.segmenter import Segmenter

    from medsam_edge.runtime.prompts import Prompt

    # Three layouts, so three decoder calls: a box, a box refined by a click, two clicks alone.
    prompts = [Prompt.of(ECHO_CHAMBER_BOX), Prompt.of(ECHO_CHAMBER_BOX, [[185, 90]], [1]),
               Prompt.of(None, [[185, 90], [150, 50]], [1, 0])]

    with open_backend(tiny_model_dir, f"triton://{server.url}/medsam") as remote:
        assert remote.describe()["server"] == server.url and remote.describe()["model_versions"] == ["1"]
        got, want = (Segmenter(b, tiny_model_dir.preprocess) for b in (remote, local))
        enc_r, enc_l = got.encode(echo_frames[0]), want.encode(echo_frames[0])
        masks_r, scores_r, logits_r = got.decode(enc_r, prompts)
        masks_l, scores_l, logits_l = want.decode(enc_l, prompts)
    assert masks_r.shape == (3, 240, 320) and masks_r[:2].any()
    np.testing.assert_array_equal(masks_r, masks_l)
    np.testing.assert_allclose(logits_r, logits_l, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores_r, scores_l, rtol=0, atol=1e-6)


@needs_server
def test_litemedsam_masks_through_triton_equal_in_process_masks(server, lite_model_dir, echo_frames):
    from medsam_edge.engines.select import open_backend
    from medsam_edge.runtime.segmenter import Segmenter

    with open_backend(lite_model_dir, f"triton://{server.url}/{LITE}") as remote, \
            open_backend(lite_model_dir, "onnxruntime-cpu", threads=1) as local:
        assert remote.describe()["model_id"] == "lite_medsam" and remote.image_shape == (1, 3, 256, 256)
        got, want = (Segmenter(b, lite_model_dir.preprocess) for b in (remote, local))
        boxes = [ECHO_CHAMBER_BOX, (100.0, 40.0, 220.0, 180.0)]
        masks_r, scores_r, _ = got.decode(got.encode(echo_frames[3]), boxes)
        masks_l, scores_l, _ = want.decode(want.encode(echo_frames[3]), boxes)
    assert masks_r.any()
    np.testing.assert_array_equal(masks_r, masks_l)
    np.testing.assert_allclose(scores_r, scores_l, rtol=0, atol=1e-6)


class ByteCounter:
    """A loopback TCP relay that counts the bytes each way: what really crossed the wire."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.upstream = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            server = socket.create_connection(self.target, timeout=5)
            for a, b, up in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pipe, args=(a, b, up), daemon=True)
                t.start()
                self._threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if up:
                with self._lock:
                    self.upstream += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(timeout=2)


@needs_server
def test_decoder_only_requests_carry_no_image_and_no_embedding(server, tiny_model_dir, local):
    relay = ByteCounter(server.grpc_port)
    try:
        with _backend(f"127.0.0.1:{relay.port}", tiny_model_dir) as remote:
            (image,) = _images(1)
            before = relay.upstream
            handle = remote.encode(image)
            assert relay.upstream - before >= image.nbytes  # the image did travel, once
            before, decodes = relay.upstream, 5
            for _ in range(decodes):
                logits, _ = remote.decode(handle, *BOXES)
            per_request = (relay.upstream - before) / decodes
    finally:
        relay.close()
    # Prompts, stream id and generation: well under a kilobyte of tensors plus gRPC framing,
    # against 4 MiB for the embedding and 12 MiB for the image.
    assert per_request < 4096, per_request
    want, _ = local.decode(local.encode(image), *BOXES)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)


@needs_server
def test_two_concurrent_clients_keep_their_own_embeddings(server, tiny_model_dir, local):
    images = _images(2)
    want = [local.decode(local.encode(im), *BOXES)[0] for im in images]
    assert np.abs(want[0] - want[1]).max() > 1e-2  # the two streams are distinguishable
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []
    clients = [_backend(server.url, tiny_model_dir) for _ in images]
    handles = [c.encode(im) for c, im in zip(clients, images)]
    assert clients[0].stream_id != clients[1].stream_id

    def work(i: int) -> None:
        try:
            for _ in range(3):  # interleaved with the other client's decodes
                results[i].append(clients[i].decode(handles[i], *BOXES)[0])
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert not errors, errors
    for i in range(2):
        assert len(results[i]) == 3
        for got in results[i]:
            np.testing.assert_allclose(got, want[i], rtol=0, atol=1e-5)


@needs_server
def test_evicted_embeddings_raise_expired_and_a_new_encode_works(server, tiny_model_dir, local):
    (image,) = _images(1)
    a = _backend(server.url, tiny_model_dir)
    assert a.embedding_slots == 2
    first = a.encode(image)
    second, third = a.encode(image), a.encode(image)
    assert not a.embedding_valid(first) and a.embedding_valid(second) and a.embedding_valid(third)
    with pytest.raises(ExpiredEmbedding, match="keeps its newest 2"):
        a.decode(first, *BOXES)  # the stream's third encode pushed its first one out
    # MAX_STREAMS newer streams push the whole stream out (least recently used first).
    others = [_backend(server.url, tiny_model_dir) for _ in range(MAX_STREAMS)]
    tiny = np.zeros((1, 3, 1024, 1024), np.float32)
    for o in others:
        o.encode(tiny)
    with pytest.raises(ExpiredEmbedding, match="stream unknown"):
        a.decode(third, *BOXES)
    assert not a.embedding_valid(third)
    again = a.encode(image)
    np.testing.assert_allclose(a.decode(again, *BOXES)[0], local.decode(local.encode(image), *BOXES)[0],
                               rtol=0, atol=1e-5)
    for b in (a, *others):
        b.close()


@needs_server
def test_errors_are_one_line_for_server_down_missing_model_and_shape_mismatch(server, tiny_model_dir):
    from medsam_edge.serving.local_server import free_port

    t0 = time.monotonic()
    with pytest.raises(InputError, match="not reachable") as down:
        _backend(f"127.0.0.1:{free_port()}", tiny_model_dir, connect_timeout=2)
    assert time.monotonic() - t0 < 15
    from medsam_edge.engines.triton_backend import TritonBackend

    with pytest.raises(InputError, match="no model 'nosuch'.*medsam") as missing:
        TritonBackend(f"triton://{server.url}/nosuch", tiny_model_dir)
    other = ModelDir(tiny_model_dir.path, {**tiny_model_dir.manifest, "model_id": "lite_medsam"})
    with pytest.raises(InputError, match="the server runs medsam_vit_tiny") as wrong_model:
        _backend(server.url, other)
    with pytest.raises(InputError, match="pass --precision fp32"):
        _backend(server.url, tiny_model_dir, precision="fp16")
    with _backend(server.url, tiny_model_dir) as remote:
        with pytest.raises(InputError, match="shape mismatch") as image_shape:
            remote.encode(np.zeros((1, 3, 256, 256), np.float32))
        handle = remote.encode(np.zeros((1, 3, 1024, 1024), np.float32))
        coords, labels = prompt_tokens(None, np.ones((11, 2)), np.ones(11))  # 12 tokens > POINTS_MAX
        with pytest.raises(InputError, match="shape mismatch.*12 points") as points:
            remote.decode(handle, coords[None], labels[None])
        remote.decode(handle, *BOXES)  # the stream is still usable after a refused request
    for e in (down, missing, wrong_model, image_shape, points):
        assert "\n" not in str(e.value) and len(str(e.value)) < 400


@needs_server
def test_server_killed_mid_stream_gives_a_clean_error_partial_outputs_stay_valid_and_restart_recovers(
        python_repo, tiny_model_dir, echo_frames, tmp_path, local):
    from medsam_edge.runtime.predictor import Predictor
    from medsam_edge.runtime.reuse import ReusePolicy
    from medsam_edge.runtime.sinks import MaskNpzSink
    from medsam_edge.serving.local_server import start

    srv = start(python_repo, ready_timeout=90)
    restarted = None
    try:
        predictor = Predictor(tiny_model_dir, f"triton://{srv.url}/medsam")
        (image,) = _images(1)
        before_kill = predictor.backend.encode(image)
        out = tmp_path / "masks.npz"
        written = 0
        with pytest.raises(InputError) as died:
            with MaskNpzSink(out) as sink:
                for result in predictor.stream(echo_frames[:5], prompts=[ECHO_CHAMBER_BOX], reuse=ReusePolicy.off()):
                    sink.write(result)
                    written += 1
                    if written == 2:
                        srv.kill()
        assert written == 2
        message = str(died.value)
        assert "\n" not in message and srv.url in message and ("went away" in message or "not reachable" in message)
        with np.load(out) as d:  # what was written before the crash is complete and readable
            assert list(d["index"]) == [0, 1] and d["masks_shape"].tolist() == [2, 1, 240, 320]
        # A server back on the same port knows nothing of the stream: expired, then a new encode works.
        restarted = start(python_repo, grpc_port=srv.grpc_port, http_port=srv.http_port, ready_timeout=90)
        with pytest.raises(ExpiredEmbedding, match="stream unknown"):
            predictor.backend.decode(before_kill, *BOXES)
        again = predictor.backend.encode(image)
        np.testing.assert_allclose(predictor.backend.decode(again, *BOXES)[0],
                                   local.decode(local.encode(image), *BOXES)[0], rtol=0, atol=1e-5)
        predictor.close()
    finally:
        srv.stop()
        if restarted is not None:
            restarted.stop()


# A stand-in for Triton's onnxruntime backend, which the wheel's server lacks: the same
# model.onnx run by onnxruntime in a Python model, so the stream model's BLS path (the one
# GPU servers use) runs here for real.
_ORT_STAND_IN = '''
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.outputs = [o["name"] for o in cfg["output"]]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        out = []
        for r in requests:
            feeds = {i.name: pb_utils.get_input_tensor_by_name(r, i.name).as_numpy() for i in self.session.get_inputs()}
            values = self.session.run(self.outputs, feeds)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(v))
                                                   for n, v in zip(self.outputs, values)]))
        return out
'''


@needs_server
def test_gpu_repository_stream_model_calls_encoder_and_decoder_models_by_bls(tiny_model_dir, local, tmp_path):
    from medsam_edge.serving.local_server import start

    repo = write_repository(tiny_model_dir, tmp_path / "repo", "onnxruntime")
    for model in ("medsam_encoder", "medsam_decoder"):
        cfg = repo / model / "config.pbtxt"
        text = cfg.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"')
        text = text.replace('default_model_filename: "model.onnx"\n', "").replace("KIND_GPU", "KIND_CPU")
        cfg.write_text(text)
        (repo / model / "1" / "model.py").write_text(_ORT_STAND_IN)
    (image,) = _images(1)
    with start(repo, ready_timeout=90) as srv, _backend(srv.url, tiny_model_dir) as remote:
        assert remote.describe()["server_platform"] == "onnxruntime"
        first = remote.encode(image)
        got = remote.decode(first, *BOXES)
        remote.encode(image), remote.encode(image)
        with pytest.raises(ExpiredEmbedding):
            remote.decode(first, *BOXES)
    want = local.decode(local.encode(image), *BOXES)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6)
