"""Scale-out on Triton: the stream model and the client backend against a real tritonserver
(the nvidia-pytriton wheel's) on 127.0.0.1; the repository writer and the stream cache
alone: tests/test_triton_repository.py. One server per repository kind: `server` runs the
python-platform repository (the tiny model and LiteMedSAM side by side), the BLS test its
own; the kill/restart test is the only other start. Every server is stopped where it was
started, every request loop is bounded, and onnxruntime runs with one thread."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.contract import box_tokens, prompt_tokens
from medsam_edge.engines.base import ExpiredEmbedding
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir
from medsam_edge.serving.repository import write_repository

from conftest import ECHO_CHAMBER_BOX
from triton_repo import MAX_STREAMS, write_python_repo

HAVE_SERVER = importlib.util.find_spec("pytriton") is not None
HAVE_CLIENT = importlib.util.find_spec("tritonclient") is not None
_server_missing = pytest.mark.skipif(not (HAVE_SERVER and HAVE_CLIENT),
                                     reason="nvidia-pytriton / tritonclient[grpc] not installed (pip install '.[triton]')")


def needs_server(test):
    """A test against a real tritonserver: skipped without one, and not in `make test-fast`."""
    return pytest.mark.integration(_server_missing(test))


# -- a real server -------------------------------------------------------------------------------

LITE = "lite"  # LiteMedSAM's stream model, beside the tiny model's "medsam" on the same server


@pytest.fixture(scope="session")
def python_repo(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's python-platform repository, as the command line writes it
    (tests/test_triton_repository.py checks what it holds)."""
    return write_python_repo(tiny_model_dir, tmp_path_factory.mktemp("triton") / "repo")


@pytest.fixture(scope="session")
def server_repo(python_repo, lite_model_dir, tmp_path_factory):
    """One `--platform python` repository with two stream models: the tiny model's and
    LiteMedSAM's under another name, so one server serves both."""
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
