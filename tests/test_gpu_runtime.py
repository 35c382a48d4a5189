"""The GPU layer's runtime side, checked without a GPU: the rebuild policy, onnxruntime's
TensorRT provider options and IO binding, the slot backend, the timing cache, and the
TensorRT/CUDA code against cuda-bindings' real signatures (the precision plan, the static
TensorRT check and the INT8 file: tests/test_gpu_layer.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.contract import EMBEDDING, IMAGE, POINT_COORDS, POINT_LABELS, POINTS_MAX, DECODER_BATCH_MAX, box_tokens
from medsam_edge.engines import engine_manifest as em
from medsam_edge.errors import InputError

from lesions import blob_inputs as _frames

ENGINES = Path(__file__).resolve().parents[1] / "engines"


# --- rebuild policy, providers, bindings ----------------------------------------------


def test_rebuild_policy_decisions_and_the_cart_default():
    from medsam_edge.engines.select import DEFAULT_REBUILD, rebuild_decision

    table = {("usable", "never"): "use", ("stale", "never"): "refuse", ("missing", "never"): "refuse",
             ("usable", "if-stale"): "use", ("stale", "if-stale"): "build", ("missing", "if-stale"): "build",
             ("usable", "always"): "build", ("stale", "always"): "build"}
    for (state, policy), want in table.items():
        assert rebuild_decision(state, policy) == want, (state, policy)
    assert DEFAULT_REBUILD == "never"  # a cart never builds behind the user's back
    with pytest.raises(InputError, match="rebuild 'sometimes': expected one of never, if-stale, always"):
        rebuild_decision("stale", "sometimes")


def test_open_backend_refuses_an_unknown_rebuild_policy(tiny_model_dir):
    from medsam_edge.engines.select import open_backend

    with pytest.raises(InputError, match="rebuild 'yes'"):
        open_backend(tiny_model_dir, "onnxruntime-cpu", rebuild="yes")
    with open_backend(tiny_model_dir, "onnxruntime-cpu", rebuild="always") as b:  # applies to TensorRT only
        assert b.name == "onnxruntime-cpu"


def test_tensorrt_provider_gets_profiles_and_caches_under_the_model_dir(tiny_model_dir, tmp_path):
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend, trt_profile_options

    shapes = em.profiles(tiny_model_dir)
    opts = trt_profile_options(shapes["decoder"])
    assert opts["trt_profile_min_shapes"] == f"{EMBEDDING}:1x256x64x64,{POINT_COORDS}:1x1x2,{POINT_LABELS}:1x1"
    assert opts["trt_profile_opt_shapes"] == f"{EMBEDDING}:1x256x64x64,{POINT_COORDS}:1x2x2,{POINT_LABELS}:1x2"
    batch = DECODER_BATCH_MAX
    assert opts["trt_profile_max_shapes"] == (f"{EMBEDDING}:1x256x64x64,{POINT_COORDS}:{batch}x{POINTS_MAX}x2,"
                                              f"{POINT_LABELS}:{batch}x{POINTS_MAX}")
    cache = tmp_path / "engines" / "ort_trt_cache"
    name, dec = OnnxruntimeBackend._provider_options("TensorrtExecutionProvider", cache, shapes["decoder"])
    assert name == "TensorrtExecutionProvider" and cache.is_dir()
    assert dec["trt_timing_cache_enable"] and dec["trt_timing_cache_path"] == str(cache)
    assert dec["trt_engine_cache_path"] == str(cache) and dec["trt_profile_max_shapes"] == opts["trt_profile_max_shapes"]
    _, enc = OnnxruntimeBackend._provider_options("TensorrtExecutionProvider", cache, shapes["encoder"])
    assert not any(k.startswith("trt_profile") for k in enc)  # static shapes need no profile
    assert OnnxruntimeBackend._provider_options("CUDAExecutionProvider", cache, shapes["decoder"]) == \
        "CUDAExecutionProvider"


def test_probe_says_when_a_listed_provider_cannot_run():
    from medsam_edge.engines.onnxruntime_backend import provider_problem

    trt = "TensorrtExecutionProvider"
    assert "TensorRT 11 needs onnxruntime-gpu 1.27 or newer" in provider_problem(trt, "1.26.1", 11, True)
    assert provider_problem(trt, "1.27.0", 11, True) is None and provider_problem(trt, "1.22.0", 10, True) is None
    assert "no TensorRT library" in provider_problem(trt, "1.22.0", None, True)
    assert "no NVIDIA driver" in provider_problem("CUDAExecutionProvider", "1.22.0", None, False)
    assert provider_problem("CUDAExecutionProvider", "1.22.0", None, True) is None
    assert provider_problem("CPUExecutionProvider") is None


def test_io_binding_keeps_the_embedding_where_the_provider_computes(tiny_model_dir):
    import onnxruntime as ort

    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend

    x = _frames(1024, 1)[0][IMAGE]
    coords, labels = box_tokens(np.array([[100, 120, 600, 700], [300, 300, 900, 800]], np.float32))
    plain = OnnxruntimeBackend(tiny_model_dir.onnx("encoder"), tiny_model_dir.onnx("decoder"))
    bound = OnnxruntimeBackend(tiny_model_dir.onnx("encoder"), tiny_model_dir.onnx("decoder"), io_device="cpu")
    assert plain.io_device is None and plain.describe()["embedding_on"] == "host"
    e_plain, e_bound = plain.encode(x), bound.encode(x)
    assert isinstance(e_plain, np.ndarray) and isinstance(e_bound, ort.OrtValue)
    assert e_bound.device_name().lower() == "cpu" and bound.describe()["embedding_on"] == "cpu"
    np.testing.assert_array_equal(bound.embedding_to_numpy(e_bound), e_plain)
    for a, b in zip(bound.decode(e_bound, coords, labels), plain.decode(e_plain, coords, labels)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(bound.decode(e_plain, coords, labels), plain.decode(e_plain, coords, labels)):
        np.testing.assert_array_equal(a, b)  # a host embedding is bound as an input too


def _cudart_calls(path: Path) -> list[tuple[str, int, int]]:
    """(function, positional arguments, line) of every cudart.X(...) / self._cudart.X(...) call."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("cuda"):
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in ("cudart", "_cudart"):
                out.append((node.func.attr, len(node.args), node.lineno))
    return out


def test_cuda_calls_match_the_bindings_signatures():
    pytest.importorskip("cuda.bindings", reason="cuda-bindings is not installed (pip install cuda-bindings)")
    from cuda.bindings import runtime

    calls = [c for f in (ENGINES / "tensorrt_backend.py", ENGINES / "cuda.py",
                         Path(__file__).resolve().parents[1] / "bench" / "trt_checks.py") for c in _cudart_calls(f)]
    assert len({c[0] for c in calls}) >= 15
    for fn, nargs, line in calls:
        assert hasattr(runtime, fn), f"line {line}: cuda.bindings.runtime has no {fn}"
        sig = (getattr(runtime, fn).__doc__ or "").splitlines()[0]
        params = [p for p in sig[sig.index("(") + 1: sig.rindex(")")].split(",") if p.strip()]
        assert nargs == len(params), f"line {line}: {fn} called with {nargs} arguments, bindings take {sig}"
    for name in ("cudaStreamNonBlocking", "cudaEventDisableTiming"):
        assert isinstance(getattr(runtime, name), int)
    for kind in ("HostToDevice", "DeviceToHost", "DeviceToDevice"):
        assert hasattr(runtime.cudaMemcpyKind, f"cudaMemcpy{kind}")
    assert hasattr(runtime.cudaStreamCaptureMode, "cudaStreamCaptureModeThreadLocal")


def test_bindings_newer_than_the_driver_say_which_extra_to_install():
    from medsam_edge.engines.cuda import driver_mismatch

    why = driver_mismatch(13050, 12080)
    assert "CUDA 13.5" in why and "CUDA 12.8" in why and "medsam-edge[gpu-cu12]" in why
    assert driver_mismatch(12090, 13000) is None and driver_mismatch(12090, 12020) is None
    assert "no NVIDIA driver" in driver_mismatch(13050, 0)


def test_type_stubs_on_the_path_are_not_taken_for_tensorrt(tmp_path, monkeypatch):
    """tensorrt-stubs installs a bare tensorrt/ folder: it imports, as a namespace package."""
    import sys

    from medsam_edge.engines.tensorrt_status import usable

    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("")
    had = sys.modules.pop("tensorrt", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        ok, why = usable()
    finally:  # the namespace module must not outlive the test: later ones would take it for TensorRT
        sys.modules.pop("tensorrt", None)
        if had is not None:
            sys.modules["tensorrt"] = had
    assert not ok and "no __version__" in why


def test_the_slot_backend_expires_handles_like_a_device_ring(tiny_model_dir):
    from fake_slots import SlotBackend

    from medsam_edge.engines.base import ExpiredEmbedding, max_kept_embeddings

    frames = _frames(1024, 2)
    coords, labels = box_tokens(np.array([[100, 120, 600, 700]], np.float32))
    b = SlotBackend(tiny_model_dir.onnx("encoder"), tiny_model_dir.onnx("decoder"), slots=2)
    assert max_kept_embeddings(b, 8) == 1
    h0 = b.encode(frames[0][IMAGE])
    ref0 = b.decode(h0, coords, labels)[0]
    h1 = b.encode(frames[1][IMAGE])
    assert b.embedding_valid(h0) and b.embedding_valid(h1)
    h2 = b.encode(frames[1][IMAGE])  # takes h0's slot
    assert not b.embedding_valid(h0) and b.embedding_valid(h2)
    with pytest.raises(ExpiredEmbedding):
        b.decode(h0, coords, labels)
    np.testing.assert_array_equal(b.decode(b.encode(frames[0][IMAGE]), coords, labels)[0], ref0)
    assert b.expired_refusals == 1


class _BuilderConfig:
    """The two IBuilderConfig calls use_timing_cache makes, failing the ways TensorRT's do."""

    def __init__(self, failure: str = "") -> None:
        self.failure, self.used = failure, []

    def create_timing_cache(self, data: bytes):
        if data and self.failure == "raises":
            raise RuntimeError("ITimingCache deserialization failed: corrupt header")
        return None if data and self.failure == "none" else ("cache", bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.used.append(cache)
        return not (self.failure == "mismatch" and cache[1])


def test_a_corrupt_or_foreign_timing_cache_is_replaced_by_a_fresh_one():
    from medsam_edge.engines.trt_build import use_timing_cache

    good = _BuilderConfig()
    assert use_timing_cache(good, b"saved") is None and good.used == [("cache", b"saved")]
    for failure, why in (("raises", "unreadable: ITimingCache deserialization failed"),
                         ("none", "TensorRT could not read it"), ("mismatch", "another GPU or TensorRT")):
        config = _BuilderConfig(failure)
        assert why in use_timing_cache(config, b"corrupt"), failure
        assert config.used[-1] == ("cache", b""), failure  # the build goes on with a fresh cache
    assert use_timing_cache(_BuilderConfig("mismatch"), b"") is None
