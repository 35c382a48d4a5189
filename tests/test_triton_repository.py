"""Scale-out on Triton without a server: the stream cache's bounds and idle drops, `triton://`
URLs, and the repositories `medsam-edge triton` writes (configs parsed by tritonclient's own
protobuf and checked against the tensor contract; options checked before anything is written).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from medsam_edge.cli import main
from medsam_edge.contract import AXES, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_OUTPUTS, EMBED_DIM, EMBED_HW, encoder_inputs
from medsam_edge.engines import triton_protocol as P
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, sha256_file
from medsam_edge.serving.cache import Expired, StreamCache
from medsam_edge.serving.repository import RECORD, write_repository

from triton_repo import MAX_STREAMS, write_python_repo

HAVE_CLIENT = importlib.util.find_spec("tritonclient") is not None


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


@pytest.mark.skipif(not HAVE_CLIENT, reason="tritonclient not installed: its model_config_pb2 parses the configs")
def test_python_repository_configs_parse_and_match_the_contract(tiny_model_dir, tmp_path):
    """The repository the server tests run, as the command line writes it."""
    python_repo = write_python_repo(tiny_model_dir, tmp_path / "repo")
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
