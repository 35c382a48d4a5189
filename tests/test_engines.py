"""Engines: layout, manifest and staleness of TensorRT engine sets, backend selection and the
build command's errors (the PyTorch backend and the GPU/TensorRT runs:
tests/test_engines_torch_gpu.py).

TensorRT cannot be installed on these machines, so the plans written here are stand-in
bytes: the manifest and staleness code treats plans as opaque files, which is the point.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.cli import main
from medsam_edge.contract import EMBEDDING, IMAGE, POINT_COORDS, POINT_LABELS, POINTS_MAX, DECODER_BATCH_MAX
from medsam_edge.engines import engine_manifest as em
from medsam_edge.engines import select
from medsam_edge.engines.select import AUTO_ORDER, find_backends, resolve
from medsam_edge.engines.trt_build import errors_line, network_flags
from medsam_edge.errors import InputError
from medsam_edge.manifest import sha256_file

H100 = em.GpuIdentity("NVIDIA H100 80GB HBM3", 9, 0)
ORIN = em.GpuIdentity("Orin (nvgpu)", 8, 7)
TRT = "10.13.0.35"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None



def _fake_build(md, gpu=H100, trt=TRT, precision="fp32", max_prompts=DECODER_BATCH_MAX) -> Path:
    """Write an engine set as trt_build does, with stand-in plan bytes."""
    out = em.engine_dir(md.path, gpu, trt)
    out.mkdir(parents=True, exist_ok=True)
    manifest = em.load(out) or em.new_manifest(md, gpu, trt)
    shapes = em.profiles(md, max_prompts)
    for part in em.PARTS:
        plan = out / em.plan_name(part, precision)
        plan.write_bytes(f"plan {part} {precision}".encode() * 100)
        em.record(manifest, precision, part, em.onnx_for(md, part, precision), plan, shapes[part], 1.5)
    em.save(out, manifest)
    return out


def test_engine_directory_is_named_after_gpu_compute_capability_and_tensorrt(tmp_path):
    assert em.engine_dir_name(H100, TRT) == "nvidia-h100-80gb-hbm3_sm90_trt10.13.0.35"
    assert em.engine_dir_name(ORIN, "10.3.0") == "orin-nvgpu_sm87_trt10.3.0"
    assert em.engine_dir(tmp_path, ORIN, "10.3.0") == tmp_path / "engines" / "orin-nvgpu_sm87_trt10.3.0"
    assert em.plan_name("decoder", "int8") == "decoder.int8.plan"


def test_precisions_parse_and_unknown_ones_are_refused():
    from medsam_edge.contract import parse_precisions

    assert parse_precisions("fp16, fp32,fp16", em.PRECISIONS) == ("fp16", "fp32")
    assert em.PRECISIONS == ("fp32", "fp16", "int8")  # what TensorRT builds: no CPU-only or runtime-only ones
    for bad in ("fp64", "", "fp16,bf16", "int8dyn"):
        with pytest.raises(InputError, match="--precision"):
            parse_precisions(bad, em.PRECISIONS)


def test_profiles_come_from_the_contract_and_match_the_exported_onnx(tiny_model_dir):
    import onnxruntime as ort

    p = em.profiles(tiny_model_dir)
    assert p["encoder"] == {IMAGE: {k: [1, 3, 1024, 1024] for k in ("min", "opt", "max")}}
    # Opt is one box: one prompt of two corner tokens.
    assert p["decoder"][POINT_COORDS] == {"min": [1, 1, 2], "opt": [1, 2, 2], "max": [DECODER_BATCH_MAX, POINTS_MAX, 2]}
    assert p["decoder"][POINT_LABELS] == {"min": [1, 1], "opt": [1, 2], "max": [DECODER_BATCH_MAX, POINTS_MAX]}
    assert p["decoder"][EMBEDDING]["max"] == [1, 256, 64, 64]
    big = em.profiles(tiny_model_dir, max_prompts=64, max_points=3)["decoder"]
    assert big[POINT_COORDS]["max"] == [64, 3, 2] and em.profile_maxima(big) == {"num_prompts": 64, "num_points": 3}
    for n in (0, 5000):
        with pytest.raises(InputError, match="--max-prompts"):
            em.profiles(tiny_model_dir, max_prompts=n)
    with pytest.raises(InputError, match="--max-points 65"):
        em.profiles(tiny_model_dir, max_points=65)
    for part in em.PARTS:
        sess = ort.InferenceSession(str(tiny_model_dir.onnx(part)), providers=["CPUExecutionProvider"])
        assert {i.name for i in sess.get_inputs()} == set(p[part])


def test_onnx_inputs_are_checked_against_the_contract(tiny_model_dir):
    import onnxruntime as ort

    def io(part):
        s = ort.InferenceSession(str(tiny_model_dir.onnx(part)), providers=["CPUExecutionProvider"])
        return {i.name: tuple(i.shape) for i in s.get_inputs()}, [o.name for o in s.get_outputs()]

    for part in em.PARTS:
        em.check_io(tiny_model_dir.onnx(part), part, 1024, *io(part))
    with pytest.raises(InputError, match=r"decoder\.onnx: does not match the encoder contract"):
        em.check_io(tiny_model_dir.onnx("decoder"), "encoder", 1024, *io("decoder"))
    with pytest.raises(InputError, match=r"input 'image' is \[1, 3, 1024, 1024\], expected \[1, 3, 256, 256\]"):
        em.check_io(tiny_model_dir.onnx("encoder"), "encoder", 256, *io("encoder"))


def test_missing_reduced_precision_encoder_says_to_calibrate(md, capsys):
    with pytest.raises(InputError, match=r"encoder\.fp16\.onnx.*medsam-edge calibrate"):
        em.onnx_for(md, "encoder", "fp16")
    assert em.onnx_for(md, "decoder", "fp16") == md.onnx("decoder")  # the decoder may stay FP32
    assert main(["build", str(md.path), "--precision", "fp32,int8"]) == 2
    err = capsys.readouterr().err
    # Without TensorRT, build says so before asking for a calibration of minutes (issue 15).
    from medsam_edge.engines.tensorrt_status import usable

    expected = ("encoder.int8.onnx", "medsam-edge calibrate") if usable()[0] else ("TensorRT is not usable here",)
    assert err.count("\n") == 1 and all(text in err for text in expected), err


def test_cuda_errors_become_one_line_input_errors():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from medsam_edge.engines.cuda import current_gpu

    # No such device anywhere; on this machine there is no driver at all. Either way: one line.
    with pytest.raises(InputError, match=r"^CUDA cudaGetDeviceProperties failed: \S"):
        current_gpu(99999)


def test_manifest_round_trip_and_fresh_engines_are_usable(md):
    out = _fake_build(md)
    m = em.load(out)
    assert m["format"] == em.FORMAT and m["tensorrt"] == TRT and m["model_id"] == md.model_id
    assert m["gpu"] == {"name": H100.name, "compute_capability": "9.0"}
    enc = m["engines"]["fp32"]["encoder"]
    assert enc["onnx"] == "encoder.onnx" and enc["onnx_sha256"] == sha256_file(md.onnx("encoder"))
    assert enc["profile"] == em.profiles(md)["encoder"] and enc["build_seconds"] == 1.5
    assert json.loads((out / em.MANIFEST).read_text()) == m
    status = em.find_engines(md, H100, TRT, "fp32")
    assert status.usable and status.reasons == [] and status.path == out
    assert em.read_plan(out, enc) == (out / "encoder.fp32.plan").read_bytes()


def test_no_engines_is_missing_and_other_precisions_do_not_count(md):
    assert em.find_engines(md, H100, TRT, "fp32").state == "missing"
    _fake_build(md)
    s = em.find_engines(md, H100, TRT, "fp16")
    assert s.state == "missing" and "no fp16 engines" in s.reasons[0]


def test_engines_from_another_gpu_or_tensorrt_version_are_stale_and_say_which(md):
    _fake_build(md, gpu=ORIN, trt="10.3.0")
    s = em.find_engines(md, H100, TRT, "fp32")
    assert s.state == "stale" and s.path == em.engine_dir(md.path, H100, TRT)
    assert "orin-nvgpu_sm87_trt10.3.0" in s.reasons[0] and "NVIDIA H100 80GB HBM3 (compute 9.0)" in s.reasons[0]
    s = em.find_engines(md, ORIN, "10.4.0", "fp32")
    assert s.state == "stale" and "TensorRT 10.3.0" in s.reasons[0] and "TensorRT 10.4.0" in s.reasons[0]
    assert em.find_engines(md, ORIN, "10.3.0", "fp32").usable


def test_a_copied_engine_directory_is_judged_by_its_manifest(md):
    out = _fake_build(md)
    m = em.load(out)
    m["tensorrt"], m["gpu"] = "10.0.1", ORIN.to_json()
    em.save(out, m)
    s = em.find_engines(md, H100, TRT, "fp32")
    assert s.state == "stale"
    assert any("TensorRT 10.0.1" in r for r in s.reasons) and any("Orin" in r for r in s.reasons)


def test_changed_onnx_makes_engines_stale(md):
    _fake_build(md)
    with open(md.onnx("encoder"), "ab") as f:
        f.write(b"\0")
    s = em.find_engines(md, H100, TRT, "fp32")
    assert s.state == "stale" and s.reasons == ["encoder.onnx changed since the build"]


def test_a_new_reduced_precision_decoder_makes_old_engines_stale(md):
    (md.path / "encoder.fp16.onnx").write_bytes(md.onnx("encoder").read_bytes())
    _fake_build(md, precision="fp16")
    assert em.find_engines(md, H100, TRT, "fp16").usable
    (md.path / "decoder.fp16.onnx").write_bytes(md.onnx("decoder").read_bytes())
    s = em.find_engines(md, H100, TRT, "fp16")
    assert s.reasons == ["decoder was built from decoder.onnx, the model now has decoder.fp16.onnx"]


def test_truncated_plan_is_stale_and_refused_before_tensorrt_reads_it(md):
    out = _fake_build(md)
    plan = out / "decoder.fp32.plan"
    plan.write_bytes(plan.read_bytes()[:100])
    s = em.find_engines(md, H100, TRT, "fp32")
    assert s.state == "stale" and s.reasons == ["decoder.fp32.plan differs from the build (truncated or corrupt)"]
    with pytest.raises(InputError, match=r"decoder\.fp32\.plan: 100 bytes.*truncated or corrupt.*medsam-edge build"):
        em.read_plan(out, em.load(out)["engines"]["fp32"]["decoder"])
    plan.unlink()
    with pytest.raises(InputError, match="plan file missing"):
        em.read_plan(out, em.load(out)["engines"]["fp32"]["decoder"])


def test_network_flags_are_strongly_typed_on_tensorrt_10_only():
    assert network_flags("10.3.0", 1) == 2
    assert network_flags("10.13.0.35", 1) == 2
    assert network_flags("11.0.0", 1) == 0  # always strongly typed; the flag is deprecated
    assert network_flags("10.0.1", None) == 0


def test_tensorrt_errors_are_summarised_on_one_line():
    oom = "Error Code 2: OutOfMemory\n(no further information)"
    s = errors_line([oom, oom, "b"])
    assert s == "Error Code 2: OutOfMemory (no further information) | b"
    assert len(errors_line(["x" * 1000])) == 300 and errors_line([]) == "no error message from TensorRT"


def test_probe_reflects_the_installed_backends():
    import onnxruntime as ort

    found = {a.name: a for a in find_backends()}
    providers = ort.get_available_providers()
    assert found["onnxruntime-cpu"].available
    assert found["onnxruntime-cuda"].available == ("CUDAExecutionProvider" in providers)
    if not HAS_TRT:
        assert not found["tensorrt"].available and "tensorrt" in found["tensorrt"].reason
        with pytest.raises(InputError, match="backend tensorrt is not available here: the tensorrt Python package"):
            resolve("tensorrt")


def _only(*available: str):
    """A find_backends() that finds exactly these backends."""
    return lambda: [select.Availability(n, n in available, "" if n in available else f"{n} is not here")
                    for n in AUTO_ORDER]


def test_auto_tries_the_backends_in_a_fixed_order_and_falls_through(monkeypatch):
    gpu = ("tensorrt", "onnxruntime-trt", "onnxruntime-cuda")
    assert select.auto_order("fp32") == (*gpu, "onnxruntime-cpu", "openvino-cpu")
    assert select.auto_order("int8") == select.auto_order("int8dyn") == select.auto_order(None) == AUTO_ORDER
    assert select.auto_order("fp16") == select.auto_order("bf16") == (*gpu, "openvino-cpu", "onnxruntime-cpu")
    monkeypatch.setattr(select, "find_backends", _only(*AUTO_ORDER))
    assert resolve("auto") == resolve("auto", "fp16") == "tensorrt"
    assert resolve("auto", "int8dyn") == "onnxruntime-trt"  # dynamic INT8 runs on onnxruntime only
    monkeypatch.setattr(select, "find_backends", _only("onnxruntime-cuda", "onnxruntime-cpu", "openvino-cpu"))
    assert resolve("auto", "fp32") == resolve("auto", "fp16") == "onnxruntime-cuda"
    monkeypatch.setattr(select, "find_backends", _only("onnxruntime-cpu", "openvino-cpu"))
    assert resolve("auto", "fp32") == resolve("auto", "int8") == resolve("auto", "int8dyn") == "onnxruntime-cpu"
    assert resolve("auto", "fp16") == resolve("auto", "bf16") == "openvino-cpu"
    monkeypatch.setattr(select, "find_backends", _only("onnxruntime-cpu"))
    assert resolve("auto", "fp16") == "onnxruntime-cpu"
    with pytest.raises(InputError, match="--precision bf16: no backend here runs it .*openvino-cpu is not here"):
        resolve("auto", "bf16")
    with pytest.raises(InputError, match="backend tensorrt is not available here: tensorrt is not here"):
        resolve("tensorrt")
    with pytest.raises(InputError, match="unknown backend 'warp'; choose auto or one of tensorrt, "):
        resolve("warp")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the no-TensorRT error paths do not apply")
def test_without_tensorrt_usable_says_why_and_build_exits_2_with_one_line(tiny_model_dir, capsys):
    from medsam_edge.engines.tensorrt_status import usable

    ok, why = usable()
    assert not ok and why.startswith("tensorrt does not import (")
    assert main(["build", str(tiny_model_dir.path), "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medsam-edge build: error: TensorRT is not usable here")
    assert not (tiny_model_dir.path / "engines").exists()


def test_build_refuses_bad_options_before_looking_for_tensorrt(tiny_model_dir, tmp_path, capsys):
    for argv, text in (
        (["--precision", "fp64"], "--precision 'fp64'"),
        (["--max-prompts", "0"], "--max-prompts 0"),
        (["--max-points", "100"], "--max-points 100"),
    ):
        assert main(["build", str(tiny_model_dir.path), *argv]) == 2
        assert text in capsys.readouterr().err
    assert main(["build", str(tmp_path / "nothing")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_a_reduced_precision_runs_with_the_fp32_decoder_standing_in(md, echo_frames):
    """encoder.fp16.onnx without decoder.fp16.onnx: the runtime runs the FP16 encoder with the
    FP32 decoder and says which files ran; a precision without files says to calibrate."""
    from medsam_edge.calibration.fp16 import convert
    from medsam_edge.runtime import Predictor

    import onnx

    onnx.save(convert(onnx.load(str(md.onnx("encoder"))), []), str(md.path / "encoder.fp16.onnx"))
    fp16 = Predictor(md.path, backend="onnxruntime-cpu", precision="fp16")
    fp32 = Predictor(md.path, backend="onnxruntime-cpu")
    assert fp16.backend.describe()["files"] == {"encoder": "encoder.fp16.onnx", "decoder": "decoder.onnx"}
    assert fp16.backend.describe()["precision"] == "fp16"
    e16 = fp16.segmenter.encode(echo_frames[0]).embedding
    e32 = fp32.segmenter.encode(echo_frames[0]).embedding
    assert 0 < np.abs(e16 - e32).max() <= 1e-2 * np.abs(e32).max()  # FP16 arithmetic, FP32 interface
    with pytest.raises(InputError, match=r"encoder\.int8\.onnx.*medsam-edge calibrate"):
        Predictor(md.path, backend="onnxruntime-cpu", precision="int8")
    fp16.close()
    fp32.close()
