"""The OpenVINO CPU backend: agreement with onnxruntime, BF16 where the CPU has it, the
compiled cache (reused, rebuilt when stale), threads read back, selection, errors.

Cache tests assert on files and log lines, never on time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from medsam_edge.contract import PRECISIONS, box_tokens, prompt_tokens
from medsam_edge.errors import InputError
from medsam_edge.manifest import load_model_dir

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'medsam-edge[openvino]')")

from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend  # noqa: E402
from medsam_edge.engines.openvino_backend import OpenvinoBackend, has_bf16  # noqa: E402
from medsam_edge.engines.select import OPENVINO_FIRST, auto_order, open_backend, find_backends, resolve  # noqa: E402
from medsam_edge.manifest import sha256_file  # noqa: E402

HAS_BF16 = has_bf16(ov.Core())
NO_BF16 = "this CPU has no BF16 arithmetic (OpenVINO lists no BF16 capability: needs AVX-512 BF16 or AMX)"
CACHE = ("engines", "openvino_cache")



def _inputs(seed: int = 1):
    x = np.random.default_rng(seed).random((1, 3, 1024, 1024), dtype=np.float32)
    boxes = box_tokens(np.array([[100, 120, 600, 700], [400, 300, 900, 950]], np.float32))
    c1, l1 = prompt_tokens([200, 220, 700, 800], [[400, 500]], [1])
    c2, l2 = prompt_tokens([50, 60, 500, 600], [[300, 300]], [0])
    clicks = (np.stack([c1, c2]), np.stack([l1, l2]))
    return x, boxes, clicks


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("medsam_edge.engines")]


def test_fp32_matches_onnxruntime_on_the_tiny_model(md):
    x, boxes, clicks = _inputs()
    ref = OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder"), threads=1)
    with open_backend(md, "openvino-cpu", "fp32", threads=1) as b:
        assert b.describe()["inference_precision"] == {"encoder": "f32", "decoder": "f32"}
        emb, emb_ref = b.encode(x), ref.encode(x)
        assert emb.shape == (1, 256, 64, 64) and emb.dtype == np.float32
        assert _rel(emb, emb_ref) < 1e-5
        for coords, labels in (boxes, clicks):
            logits, iou = b.decode(emb_ref, coords, labels)
            logits_ref, iou_ref = ref.decode(emb_ref, coords, labels)
            assert logits.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
            assert _rel(logits, logits_ref) < 1e-5 and np.abs(iou - iou_ref).max() < 1e-5
        # The embedding handed out is the caller's: a later encode does not overwrite it.
        kept = emb.copy()
        b.encode(np.zeros_like(x))
        assert np.array_equal(emb, kept)


@pytest.fixture
def calibrated_md(calibrated_tiny, tmp_path):
    """A private copy of the session's calibrated tiny model (conftest): `calibrate`'s own
    encoder.fp16.onnx and encoder.int8.onnx, not stand-ins; OpenVINO writes its caches here."""
    shutil.copytree(calibrated_tiny.path, tmp_path / "m")
    return load_model_dir(tmp_path / "m")


def test_fp16_and_int8_files_run_and_agree_with_onnxruntime(calibrated_md):
    """fp16: both compute the FP16 file in FP32 on this CPU, so tight (rel 1e-3). int8: the two
    runtimes' integer arithmetic differs (OpenVINO runs real INT8 kernels; on a CPU without
    VNNI its u8*s8 path loses more), so only agreement to cosine 0.9 on the tiny random model
    (0.956 on an AVX2 CPU with every Conv/MatMul quantized; calibrate's file keeps a few in FP16)."""
    md = calibrated_md
    x = np.random.default_rng(5).random((1, 3, 1024, 1024), dtype=np.float32)
    for precision, bound in (("fp16", 1e-3), ("int8", None)):
        with open_backend(md, "openvino-cpu", precision, threads=1) as b:
            d = b.describe()
            assert d["precision"] == precision and d["inference_precision"]["encoder"] == "f32"
            got = b.encode(x)
        want = OnnxruntimeBackend(md.onnx("encoder", precision), md.onnx("decoder"), threads=1).encode(x)
        cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        if bound is not None:
            assert _rel(got, want) < bound
        else:
            assert cos >= 0.9
    assert (md.path.joinpath(*CACHE) / "encoder.int8.json").is_file()


@pytest.mark.skipif(not HAS_BF16, reason=NO_BF16)
def test_bf16_runs_at_bf16_and_stays_close_to_fp32(md):
    """Tolerance on the tiny random model: embedding cosine >= 0.999, mask pixels agreeing >= 0.98."""
    x, boxes, _ = _inputs()
    ref = OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder"), threads=1)
    with open_backend(md, "openvino-cpu", "bf16", threads=1) as b:
        assert b.describe()["precision"] == "bf16"
        assert b.describe()["inference_precision"] == {"encoder": "bf16", "decoder": "bf16"}
        emb, emb_ref = b.encode(x), ref.encode(x)
        cos = float((emb * emb_ref).sum() / np.linalg.norm(emb) / np.linalg.norm(emb_ref))
        assert cos >= 0.999
        logits, _ = b.decode(emb_ref, *boxes)
        logits_ref, _ = ref.decode(emb_ref, *boxes)
        assert float(((logits > 0) == (logits_ref > 0)).mean()) >= 0.98


@pytest.mark.skipif(HAS_BF16, reason="this CPU has BF16: the refusal path does not apply")
def test_bf16_without_bf16_is_one_line_naming_the_cpu(md):
    with pytest.raises(InputError) as e:
        open_backend(md, "openvino-cpu", "bf16")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--precision bf16: this CPU (") and "no BF16 arithmetic" in msg
    assert "choose --precision fp32" in msg
    assert not (md.path.joinpath(*CACHE) / "encoder.bf16.blob").exists()


def test_compiled_cache_is_written_then_reused(md, caplog):
    cache = md.path.joinpath(*CACHE)
    with caplog.at_level(logging.INFO):
        first = open_backend(md, "openvino-cpu", "fp32", threads=1)
    log1 = _messages(caplog)
    assert "openvino: compiling encoder.onnx (fp32): no compiled cache yet" in log1
    assert "openvino: compiling decoder.onnx (fp32): no compiled cache yet" in log1
    assert first.describe()["compiled"] == {"encoder": "compiled", "decoder": "compiled"}
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert set(files) == {"encoder.fp32.blob", "encoder.fp32.json", "decoder.fp32.blob", "decoder.fp32.json"}
    key = json.loads((cache / "decoder.fp32.json").read_text())
    assert key["onnx"] == "decoder.onnx" and key["openvino"] == ov.get_version()
    assert key["onnx_sha256"] == sha256_file(md.onnx("decoder"))
    x, boxes, _ = _inputs()
    emb = first.encode(x)
    out1 = first.decode(emb, *boxes)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = open_backend(md, "openvino-cpu", "fp32", threads=1)
    assert not [m for m in _messages(caplog) if "compiling" in m or "rebuilding" in m]
    assert "openvino: encoder ready in" in " ".join(_messages(caplog))
    assert second.describe()["compiled"] == {"encoder": "cached", "decoder": "cached"}
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files  # read, not rewritten
    np.testing.assert_array_equal(second.encode(x), emb)
    out2 = second.decode(emb, *boxes)
    np.testing.assert_array_equal(out1[0], out2[0])


def test_cache_is_rebuilt_when_the_onnx_or_the_openvino_version_changes(md, caplog):
    import onnx

    cache = md.path.joinpath(*CACHE)
    open_backend(md, "openvino-cpu", "fp32").close()
    # Same graph, different bytes: a re-export writes a new file with the same name.
    dec = onnx.load(str(md.onnx("decoder")))
    dec.doc_string = "re-exported"
    onnx.save(dec, str(md.onnx("decoder")))
    key = cache / "encoder.fp32.json"
    k = json.loads(key.read_text())
    k["openvino"] = "2024.0.0-older"
    key.write_text(json.dumps(k))
    with caplog.at_level(logging.INFO):
        b = open_backend(md, "openvino-cpu", "fp32")
    log = _messages(caplog)
    assert ("openvino: rebuilding the compiled cache of decoder.onnx (fp32): decoder.onnx changed since it was "
            "compiled") in log
    assert (f"openvino: rebuilding the compiled cache of encoder.onnx (fp32): compiled by OpenVINO 2024.0.0-older, "
            f"this is {ov.get_version()}") in log
    assert b.describe()["compiled"] == {"encoder": "compiled", "decoder": "compiled"}
    assert json.loads(key.read_text())["openvino"] == ov.get_version()
    assert json.loads((cache / "decoder.fp32.json").read_text())["onnx_sha256"] == \
        sha256_file(md.onnx("decoder"))


def test_a_corrupt_compiled_blob_is_rebuilt_not_used(md, caplog):
    cache = md.path.joinpath(*CACHE)
    open_backend(md, "openvino-cpu", "fp32").close()
    blob = cache / "decoder.fp32.blob"
    blob.write_bytes(blob.read_bytes()[:1000])
    with caplog.at_level(logging.INFO):
        b = open_backend(md, "openvino-cpu", "fp32")
    assert any(m.startswith("openvino: rebuilding the compiled cache of decoder.onnx (fp32): decoder.fp32.blob "
                            "is not the blob its key was written for") for m in _messages(caplog))
    assert b.describe()["compiled"]["decoder"] == "compiled" and blob.stat().st_size > 1000


@pytest.mark.fuzz
def test_a_swapped_compiled_blob_is_rebuilt_and_the_backend_runs(md, caplog):
    """Cache tampering: the encoder's blob under the decoder's name imports in OpenVINO and
    fails only at inference; the blob's own hash in the key catches it first."""
    cache = md.path.joinpath(*CACHE)
    open_backend(md, "openvino-cpu", "fp32").close()
    (cache / "decoder.fp32.blob").write_bytes((cache / "encoder.fp32.blob").read_bytes())
    with caplog.at_level(logging.INFO):
        b = open_backend(md, "openvino-cpu", "fp32")
    assert any("decoder.fp32.blob is not the blob its key was written for" in m for m in _messages(caplog))
    assert b.describe()["compiled"] == {"encoder": "cached", "decoder": "compiled"}
    x, boxes, _ = _inputs()
    with b:
        logits, iou = b.decode(b.encode(x), *boxes)
        assert logits.shape == (2, 1, 256, 256) and np.isfinite(logits).all()


def test_auto_for_bf16_opens_openvino_and_the_log_says_so(md, caplog):
    if not HAS_BF16:
        with pytest.raises(InputError, match=r"^--precision bf16: this CPU"):
            open_backend(md, "auto", "bf16")
        return
    with caplog.at_level(logging.INFO):
        b = open_backend(md, "auto", "bf16", threads=1)
    assert b.describe()["backend"] == "openvino-cpu"
    assert any(m.startswith("backend openvino-cpu (auto) (cpu, bf16)") for m in _messages(caplog))


def test_threads_are_read_back_from_the_compiled_models(md):
    cores = len(os.sched_getaffinity(0))
    with open_backend(md, "openvino-cpu", threads=1) as b:
        assert b.describe()["threads"] == {"encoder": 1, "decoder": 1}
        assert int(b.parts["decoder"].get_property("INFERENCE_NUM_THREADS")) == 1
        assert str(b.parts["encoder"].get_property("PERFORMANCE_HINT")) in ("LATENCY", "PerformanceMode.LATENCY")
    if cores >= 2:
        # Real-time mode's split: the encoder and decoder each get their own count.
        with open_backend(md, "openvino-cpu", threads=cores - 1, decoder_threads=1) as b:
            assert b.describe()["threads"] == {"encoder": cores - 1, "decoder": 1}
            assert b.parts["encoder"].get_property("ENABLE_CPU_PINNING") is False


def test_selection_with_the_installed_set(md):
    found = {a.name: a for a in find_backends()}
    assert found["openvino-cpu"].available and found["openvino-cpu"].reason == ""
    # Only OpenVINO runs bf16; int8dyn is onnxruntime's own.
    assert resolve("auto", "bf16") == "openvino-cpu"
    for p in PRECISIONS:
        cpu = [n for n in auto_order(p) if n.endswith("-cpu")]
        assert cpu == (["openvino-cpu", "onnxruntime-cpu"] if p in OPENVINO_FIRST else ["onnxruntime-cpu", "openvino-cpu"])
        want = next(n for n in auto_order(p) if found[n].available and n.split("-")[0] in PRECISIONS[p].runs_on)
        assert resolve("auto", p) == want
    assert resolve("auto", "int8dyn") in ("onnxruntime-trt", "onnxruntime-cuda", "onnxruntime-cpu")
    with pytest.raises(InputError, match=r"^--precision bf16 runs on openvino, not on onnxruntime-cpu"):
        open_backend(md, "onnxruntime-cpu", "bf16")
    with pytest.raises(InputError, match=r"^--precision int8dyn runs on onnxruntime, not on openvino-cpu"):
        open_backend(md, "openvino-cpu", "int8dyn")
    with pytest.raises(InputError, match=r"^backend openvino-cpu runs precisions fp32, fp16, int8, bf16, not 'int8dyn'"):
        OpenvinoBackend(md.onnx("encoder"), md.onnx("decoder"), "int8dyn")


def test_info_lists_openvino(capsys):
    from medsam_edge.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["openvino-cpu", "available"] for line in out.splitlines())


@pytest.mark.parametrize("damage", ["truncated", "not onnx"])
def test_an_onnx_openvino_cannot_read_is_one_line(md, damage):
    dec = md.onnx("decoder")
    data = dec.read_bytes()
    dec.write_bytes(data[: len(data) // 50] if damage == "truncated" else b"this is not an ONNX file")
    with pytest.raises(InputError) as e:
        open_backend(md, "openvino-cpu", "fp32")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{dec}: OpenVINO cannot read it (")
    assert not (md.path.joinpath(*CACHE) / "decoder.fp32.json").exists()


def test_without_openvino_info_and_selection_say_why(monkeypatch):
    """Where the package is missing (simulated: find_spec answers None for it alone)."""
    import importlib.util

    from medsam_edge.engines import select

    real = importlib.util.find_spec
    monkeypatch.setattr(select.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    found = {a.name: a for a in find_backends()}
    assert not found["openvino-cpu"].available
    assert found["openvino-cpu"].reason == ("the openvino Python package is not installed "
                                            "(pip install 'medsam-edge[openvino]')")
    with pytest.raises(InputError, match=r"^backend openvino-cpu is not available here: the openvino Python"):
        resolve("openvino-cpu")
    with pytest.raises(InputError, match=r"^--precision bf16: no backend here runs it \(it needs openvino\); "
                                         r"openvino-cpu: the openvino Python package is not installed"):
        resolve("auto", "bf16")
    assert resolve("auto", "fp16") == next(n for n in auto_order("fp16") if found[n].available)
