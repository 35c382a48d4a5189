"""`--precision auto` and BF16 plans: the choice from CPU flags, backends and the fidelity
report; plans stored by `calibrate --precision bf16` and run as segments; records that say
what ran.

CPU flags are given to the chooser as a parameter (the chooser itself runs for real); the
tiny random model is calibrated once, on synthetic pictures and pydicom's cine, never on
../shared data. Tests that run BF16 arithmetic skip on CPUs without it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.manifest import load_model_dir

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'medsam-edge[openvino]')")

from medsam_edge.engines import openvino_segments as segs  # noqa: E402
from medsam_edge.engines.auto_precision import choose, cpu_flags  # noqa: E402
from medsam_edge.engines.openvino_backend import OpenvinoBackend, has_bf16  # noqa: E402
from medsam_edge.engines.select import open_backend  # noqa: E402

HAS_BF16 = has_bf16(ov.Core())
NO_BF16 = "this CPU has no BF16 arithmetic (OpenVINO lists no BF16 capability: needs AVX-512 BF16 or AMX)"
BF16_FLAGS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
AVX2_ONLY = frozenset({"avx2", "fma"})
CPU_BACKENDS = {"onnxruntime-cpu", "openvino-cpu"}
DICOM = "pydicom:examples_ybr_color.dcm"
# Loose on purpose: the random tiny model's masks are what is judged; this test needs a report that meets.
LOOSE = {"fp16": {"mean": 0.9, "worst": 0.5}}



@pytest.fixture(scope="module")
def calibrated(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model after `calibrate --precision bf16` (the plan search and the report)."""
    if not HAS_BF16:
        pytest.skip(NO_BF16)
    from lesions import lesion_pictures as _pictures

    from medsam_edge.calibration.run import FrameOptions, Options, SearchOptions, calibrate

    root = tmp_path_factory.mktemp("bf16")
    _pictures(root / "img", None, 8)
    shutil.copytree(tiny_model_dir.path, root / "tiny")
    opts = Options(precisions=("bf16",), frames=FrameOptions(count=8, holdout=0.3, cache_dir=str(root / "cache")),
                   search=SearchOptions(search_frames=2), latency_rounds=0, quiet=True, targets=LOOSE)
    calibrate(load_model_dir(root / "tiny"), [str(root / "img"), DICOM], opts)
    return root / "tiny"


def _copy(path: Path, tmp_path: Path):
    shutil.copytree(path, tmp_path / "c")
    return load_model_dir(tmp_path / "c")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_bf16 amx_bf16\n\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") is None


def test_auto_is_fp32_without_bf16_flags_or_without_a_report(md):
    c = choose(md, CPU_BACKENDS, flags=AVX2_ONLY)
    assert (c.backend, c.precision) == ("auto", "fp32") and "no AVX-512 BF16" in c.reason
    c = choose(md, CPU_BACKENDS, flags=None)
    assert c.precision == "fp32" and "unreadable" in c.reason
    if HAS_BF16:
        c = choose(md, CPU_BACKENDS, flags=BF16_FLAGS)
        assert c.precision == "fp32" and "no fidelity report" in c.reason
    c = choose(md, {"onnxruntime-cpu"}, flags=BF16_FLAGS)
    assert c.precision == "fp32" and "openvino-cpu is not usable" in c.reason
    with open_backend(md, precision="auto", cpu_flags=AVX2_ONLY) as b:
        d = b.describe()
        assert d["precision"] == "fp32" and d["precision_choice"].startswith("auto: ")


def test_segments_compose_to_the_whole_graph_in_f32(md):
    from medsam_edge.calibration.bf16 import blocks

    enc = md.onnx("encoder")
    found = blocks(enc)
    assert len(found) >= 3 and found[-1]["end"] is None
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    cut = [segs.Segment(None if i == 0 else found[i - 1]["end"], b["end"], "fp32", (b["name"],))
           for i, b in enumerate(found)]
    chain = segs.Chain([core.compile_model(segs.submodel(core, enc, s), "CPU", config) for s in cut], cut)
    whole = core.compile_model(core.read_model(str(enc)), "CPU", config)
    x = np.random.default_rng(3).random((1, 3, 1024, 1024), dtype=np.float32)
    want = whole.create_infer_request().infer({"image": x})[whole.outputs[0]]
    got = chain.infer({"image": x})["embedding"]
    assert got.shape == want.shape
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-5


@pytest.mark.skipif(not HAS_BF16, reason=NO_BF16)
def test_a_plan_runs_each_segment_at_its_precision(md):
    from medsam_edge.calibration.bf16 import blocks, make_plan

    enc, dec = md.onnx("encoder"), md.onnx("decoder")
    found = blocks(enc)
    plan = make_plan("encoder", enc, found, {0})
    with OpenvinoBackend(enc, dec, "bf16", threads=1, plans={"encoder": plan}) as b:
        got = {c.get_property("INFERENCE_PRECISION_HINT").get_type_name() for c in b.chains["encoder"].compiled}
        assert got == {"f32", "bf16"} and len(b.chains["encoder"].compiled) == 2
        assert b.describe()["inference_precision"]["encoder"] == f"bf16+f32 (1 of {len(found)} blocks f32)"
        emb = b.encode(np.random.default_rng(1).random((1, 3, 1024, 1024), dtype=np.float32))
        assert emb.shape == (1, 256, 64, 64) and np.isfinite(emb).all()
    bad = json.loads(json.dumps(plan))
    bad["blocks"][0]["end"] = "no_such_tensor"
    with pytest.raises(Exception, match="no_such_tensor"):
        OpenvinoBackend(enc, dec, "bf16", threads=1, plans={"encoder": bad})
    other = {**plan, "onnx_sha256": "0" * 64}
    with pytest.raises(Exception, match="made for another encoder.onnx"):
        OpenvinoBackend(enc, dec, "bf16", threads=1, plans={"encoder": other})


def test_calibrate_stores_the_plan_and_the_report_names_it(calibrated):
    m = json.loads((calibrated / "manifest.json").read_text())
    rec = m["precision"]["bf16"]
    plans = segs.stored_plans(m)
    for part in ("encoder", "decoder"):
        segs.check_plan(rec[part]["plan"], part)
    assert rec["plan_id"] == segs.plan_id(plans)
    assert [b["name"] for b in rec["encoder"]["plan"]["blocks"]] == rec["encoder"]["blocks"]
    row = json.loads((calibrated / "fidelity.json").read_text())["precisions"]["bf16"]
    assert row["plan_id"] == rec["plan_id"] and row["backends"]["openvino-cpu"]["meets_target"]
    # The plan is loaded back: the backend auto opens runs it.
    with open_backend(calibrated, "openvino-cpu", "bf16", threads=1) as b:
        assert b.plan_id == rec["plan_id"] and b.describe()["bf16_plan"] == rec["plan_id"]


def test_auto_picks_bf16_where_the_report_meets_and_the_flags_say_so(calibrated, tmp_path):
    md = load_model_dir(calibrated)
    c = choose(md, CPU_BACKENDS, flags=BF16_FLAGS)
    assert (c.backend, c.precision) == ("openvino-cpu", "bf16") and "meets its target" in c.reason
    assert "avx512_bf16" in c.reason
    assert choose(md, CPU_BACKENDS, flags=AVX2_ONLY).precision == "fp32"
    assert choose(md, CPU_BACKENDS, "onnxruntime-cpu", flags=BF16_FLAGS).precision == "fp32"
    # A plan changed after the report was written is not judged by the old figures.
    changed = _copy(calibrated, tmp_path)
    first = changed.manifest["precision"]["bf16"]["encoder"]["plan"]["blocks"][0]
    first["precision"] = "bf16" if first["precision"] == "fp32" else "fp32"
    changed.save()
    c = choose(load_model_dir(changed.path), CPU_BACKENDS, flags=BF16_FLAGS)
    assert c.precision == "fp32" and "another BF16 plan" in c.reason


def test_a_chosen_plan_that_does_not_open_falls_back_to_fp32(calibrated, tmp_path, caplog):
    md = _copy(calibrated, tmp_path)
    plan = md.manifest["precision"]["bf16"]["encoder"]["plan"]
    plan["blocks"] = [{"name": "a", "end": "no_such_tensor", "precision": "fp32"},
                      {"name": "b", "end": None, "precision": "bf16"}]
    plans = segs.stored_plans(md.manifest)
    md.manifest["precision"]["bf16"]["plan_id"] = segs.plan_id(plans)
    md.save()
    report = json.loads((md.path / "fidelity.json").read_text())
    report["precisions"]["bf16"]["plan_id"] = segs.plan_id(plans)
    (md.path / "fidelity.json").write_text(json.dumps(report))
    with caplog.at_level(logging.INFO, logger="medsam_edge.engines"):
        with open_backend(md.path, precision="auto", threads=1, cpu_flags=BF16_FLAGS) as b:
            assert b.precision == "fp32" and "did not open" in b.describe()["precision_choice"]
    assert any("no_such_tensor" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_records_name_the_backend_and_precision_that_ran(calibrated, tmp_path, capsys):
    """The CLI's default is auto: what it picks follows this machine's own flags."""
    from medsam_edge.cli import main

    from medsam_edge.engines.select import find_backends, resolve

    expected = choose(load_model_dir(calibrated), {a.name for a in find_backends() if a.available})
    out = tmp_path / "out"
    rc = main(["run", str(calibrated), DICOM, "--box", "160,60,210,125", "--max-frames", "3", "--no-video",
               "--threads", "1", "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert summary["precision"] == expected.precision
    assert summary["backend"] == resolve(expected.backend, expected.precision)
    lines = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert lines and all(r["backend"] == summary["backend"] and r["precision"] == expected.precision for r in lines)
    from medsam_edge.runtime import Predictor

    with Predictor(calibrated, threads=1) as p:
        assert p.backend.precision == expected.precision
        assert p.backend.describe()["precision_choice"].startswith("auto: ")
        with p.session(prompts=[[160, 60, 210, 125]]) as s:
            r = s.process(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
        assert r.record()["precision"] == expected.precision
