"""`medsam-edge bench` on the tiny model: report contents, failing rows, bad input.

Speed is measured, never asserted. The failing rows are real ONNX files in a copy of
the model directory: an FP16 file that cannot load, and an "INT8" encoder that loads
and runs on dark frames but raises inside onnxruntime on bright ones, so it fails in
the middle of the measured frames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsam_edge.bench import fidelity
from medsam_edge.cli import main


def _failing_encoder(path, size: int) -> None:
    """image -> constant embedding; Gather index 10 of 2 (an onnxruntime error) when the mean > 0.5."""
    import onnx
    from onnx import TensorProto, helper

    c = lambda name, dtype, vals, dims: helper.make_tensor(name, dtype, dims, vals)  # noqa: E731
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "half"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["bright_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["bright_i", "ten"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["value"]),
        helper.make_node("Expand", ["value", "shape"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "fails_on_bright_frames",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 256, 64, 64])],
        [c("half", TensorProto.FLOAT, [0.5], []), c("ten", TensorProto.INT64, [10], []),
         c("table", TensorProto.FLOAT, [0.01, 0.02], [2]), c("shape", TensorProto.INT64, [1, 256, 64, 64], [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _moving_disc_clip(path: Path) -> None:
    """Six 64x64 frames at 30 fps of a bright disc moving right one pixel a frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 64))
    for i in range(6):
        img = np.full((64, 64, 3), 30, np.uint8)
        cv2.circle(img, (28 + i, 32), 12, (220, 220, 220), -1)
        writer.write(img)
    writer.release()


# The tests that read bench_run's report: one `medsam-edge bench` run of every row, with
# failures injected, streams and a long run (25 s of setup on 2 cores): a long CLI suite,
# so not in make test-fast.
BENCH_CLI = pytest.mark.integration


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    md = root / "model"
    shutil.copytree(tiny_model_dir.path, md)
    (md / "encoder.fp16.onnx").write_bytes(b"not an onnx file")
    _failing_encoder(md / "encoder.int8.onnx", 1024)
    frames = root / "frames"
    frames.mkdir()
    yy, xx = np.mgrid[0:96, 0:128]
    blob = ((xx - 64) ** 2 + (yy - 48) ** 2 < 400)[..., None]
    # a.png: a bright blob on dark (mean < 0.5); b.png: a dark blob on bright (mean > 0.5).
    cv2.imwrite(str(frames / "a.png"), np.where(blob, 230, 20).astype(np.uint8).repeat(3, -1))
    cv2.imwrite(str(frames / "b.png"), np.where(blob, 20, 230).astype(np.uint8).repeat(3, -1))
    clip = root / "clip.mp4"
    _moving_disc_clip(clip)
    out = root / "out"
    rc = main(["bench", str(md), "--frames", str(frames), "--runs", "2", "--max-frames", "2", "--quick",
               "--stream", f"{clip}@12,16,48,48", "--stream-frames", "6",
               "--long-run", f"{clip}@12,16,48,48", "--long-frames", "12", "--out", str(out)])
    return rc, json.loads((out / "report.json").read_text()), out


@BENCH_CLI
def test_report_has_every_row_and_failures_do_not_stop_the_others(bench_run):
    rc, rep, out = bench_run
    rows = {r["name"]: r for r in rep["rows"]}
    assert rc == 1 and rep["status"] == "partial"  # a failed row: exit 1, the rest complete
    assert {"reference", "onnxruntime-cpu-fp32", "onnxruntime-cpu-fp16", "onnxruntime-cpu-int8"} <= set(rows)
    assert rows["reference"]["status"] == rows["onnxruntime-cpu-fp32"]["status"] == "ok"
    assert rows["onnxruntime-cpu-fp16"]["status"] == "failed" and rows["onnxruntime-cpu-fp16"]["failed_at"] == "load"
    int8 = rows["onnxruntime-cpu-int8"]
    assert int8["status"] == "failed" and int8["failed_at"].startswith("frame 1") and "Gather" in int8["error"]
    assert {s["frame"] for s in int8["samples"]} == {0}  # it ran frame 0 before failing
    for name in ("reference", "onnxruntime-cpu-fp32"):
        assert len(rows[name]["samples"]) == 4  # 2 frames x 2 runs, all measured
    assert rows["torch-cuda-fp16"]["status"] == "skipped" and rows["torch-cuda-fp16"]["error"]
    md = (out / "report.md").read_text()
    assert "onnxruntime-cpu-int8 | failed" in md and "Gather" in md


@BENCH_CLI
def test_ratios_are_paired_against_the_reference_of_the_same_run(bench_run):
    _, rep, _ = bench_run
    rows = {r["name"]: r for r in rep["rows"]}
    ref = {(s["frame"], s["run"]): s for s in rows["reference"]["samples"]}
    fast = rows["onnxruntime-cpu-fp32"]
    for stage in ("encode", "decode", "e2e"):
        ratios = [ref[(s["frame"], s["run"])][stage] / s[stage] for s in fast["samples"]]
        assert fast["speedup_vs_reference"][stage]["median"] == pytest.approx(np.median(ratios), abs=1e-3)
        assert fast["speedup_vs_reference"][stage]["n"] == len(fast["samples"]) == 4
    for name in ("reference", "onnxruntime-cpu-fp32"):
        row = rows[name]
        lat = row["latency_ms"]
        assert set(lat) == {"read", "preprocess", "encode", "decode", "postprocess", "e2e"}
        assert {"p50", "p95", "p99", "mean", "std", "iqr"} <= set(lat["e2e"])
        # Each sample's end to end is its read plus the Segmenter's stages.
        for x in row["samples"]:
            parts = x["read"] + x["preprocess"] + x["encode"] + x["decode"] + x["postprocess"]
            assert x["e2e"] == pytest.approx(parts, abs=0.01)
        # Time to the first frame is the load and the first (warm-up) frame; a row's memory
        # peak covers its load.
        assert row["time_to_first_frame_s"] == pytest.approx(row["load_s"] + row["first_frame_ms"] / 1e3, abs=2e-3)
        assert row["peak_rss_mb"] >= row["rss_after_load_mb"] - 1
        floor = row["floor"]
        assert floor["encode_floor_ms"] == rep["compute"]["encoder_floor_ms"]
        assert floor["encode_x_floor"] == pytest.approx(lat["encode"]["p50"] / floor["encode_floor_ms"], rel=0.01)


@BENCH_CLI
def test_fidelity_columns_against_the_reference(bench_run, tiny_model_dir):
    """The report's Dice and cosine equal what independent code computes on the same frames:
    export.reference's predictor (the oracle) against the runtime's Predictor."""
    from medsam_edge.export.models import build_model
    from medsam_edge.export.reference import ReferencePredictor
    from medsam_edge.metrics import cosine, dice
    from medsam_edge.runtime import Predictor

    _, rep, _ = bench_run
    rows = {r["name"]: r for r in rep["rows"]}
    f = rows["onnxruntime-cpu-fp32"]["fidelity"]
    assert {"dice_mean", "dice_p5", "dice_min", "iou_mean", "cosine_min"} <= set(f) and f["masks"] == 2
    ref = ReferencePredictor(build_model("medsam_vit_tiny", seed=0), tiny_model_dir.preprocess)
    ours = Predictor(tiny_model_dir.path, backend="onnxruntime-cpu")
    want_dice, want_cos = [], []
    for fr in rep["frames"]:
        image = cv2.cvtColor(cv2.imread(str(sorted(Path(fr["source"]).iterdir())[fr["index"]])), cv2.COLOR_BGR2RGB)
        boxes = np.asarray(fr["boxes"], np.float32)
        ref_emb = ref.set_image(image).numpy()
        ref_masks, _ = ref.predict(boxes)
        ours.set_image(image)
        masks, _ = ours.predict(boxes=boxes)
        want_dice += [dice(a, b) for a, b in zip(masks, ref_masks)]
        want_cos.append(cosine(ours.backend.embedding_to_numpy(ours._encoded.embedding), ref_emb))
    got = [d for frame in rows["onnxruntime-cpu-fp32"]["fidelity_frames"] for d in frame["dice"]]
    np.testing.assert_allclose(got, want_dice, atol=1e-5)
    assert f["cosine_min"] == pytest.approx(min(want_cos), abs=1e-5)
    assert len(rows["onnxruntime-cpu-int8"]["fidelity_frames"]) == 1
    # torch's FLOP counter and the ONNX graph's own count (calibration.plan) agree.
    from medsam_edge.calibration.plan import plan

    assert rep["compute"]["encoder_flops"] == plan(tiny_model_dir.onnx("encoder"))["total_flops"]
    c = rep["compute"]
    assert c["encoder_floor_ms"] == pytest.approx(c["encoder_flops"] / c["matmul"]["gflops"] / 1e6, rel=1e-3)
    assert rep["thresholds"] == fidelity.THRESHOLDS  # the report records the thresholds its flags used


@BENCH_CLI
def test_streaming_and_long_run_are_reported(bench_run):
    _, rep, out = bench_run
    (st,) = rep["streaming"]
    modes = [r["mode"] for r in st["rows"]]
    # Reuse off, deterministic with motion compensation on and off, real-time on and off.
    assert modes[0] == "reuse off" and modes[-1].startswith("real-time") and len(modes) == 5
    assert all(r["frames"] == 6 and r["capture_to_mask_ms"] for r in st["rows"][:3])
    assert st["curve"] and {p["motion"] for p in st["curve"]} == {True, False}
    assert (out / "report.md").read_text().count("Dice vs reuse") == 1
    assert set(st["reference_stability"]) == {"1", "2", "5"}  # 6 frames: no pair 10 or 30 apart
    assert (out / "report.md").read_text().count("Fresh masks against the fresh masks k frames earlier") == 1
    lr = rep["long_run"]
    assert lr["frames"] + lr["dropped"] <= 12 and len(lr["capture_to_mask_samples_ms"]) == lr["frames"]
    assert lr["dice_count"] > 0  # compared with fresh masks by clip position
    assert (out / "report.md").read_text().count("Long real-time run") == 1


@BENCH_CLI
def test_benchmarks_md_is_generated_from_the_report(bench_run, tmp_path):
    from medsam_edge.bench import benchmarks_md

    _, rep, out = bench_run
    dest = tmp_path / "BENCHMARKS.md"
    assert benchmarks_md.main([str(out / "report.json"), "--out", str(dest)]) == 0
    text = dest.read_text()
    assert rep["command"] in text and rep["machine"]["date"] in text and "## Targets" in text
    assert 0.0 <= rep["cpu_used_by_others"] <= 1.0
    assert f"other processes used {rep['cpu_used_by_others']:.1%} of the CPU during the run" in text


def test_unknown_backend_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys):
    rc = main(["bench", str(tiny_model_dir.path), "--frames", "x.mp4", "--backends", "onnxruntime-cpu,warp-drive",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown backend 'warp-drive'" in err[0]
    assert json.loads((tmp_path / "report.json").read_text())["status"] == "error"


def test_without_frames_bench_measures_pydicoms_echo_cine(lite_model_dir, echo_frames, tmp_path):
    """LiteMedSAM's real weights on a real ultrasound frame: the FP32 row's masks (onnxruntime,
    the runtime's OpenCV pixels) match the PyTorch reference's (the script's pixels)."""
    from medsam_edge.runtime import Predictor

    rc = main(["bench", str(lite_model_dir.path), "--quick", "--max-frames", "1", "--runs", "1",
               "--backends", "onnxruntime-cpu-fp32", "--out", str(tmp_path / "out")])
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 0 and rep["status"] == "complete"
    assert rep["settings"]["sources"] == ["pydicom:examples_ybr_color.dcm@160,60,210,125"]
    assert rep["frames"][0]["boxes"] == [[160.0, 60.0, 210.0, 125.0]] and rep["frames"][0]["hw"] == [240, 320]
    fp32 = next(r for r in rep["rows"] if r["name"] == "onnxruntime-cpu-fp32")
    assert fp32["fidelity"]["masks"] == 1 and fp32["fidelity"]["dice_min"] > 0.99
    # A mask that fills part of the box: a Dice between empty masks would say nothing.
    with Predictor(lite_model_dir, backend="onnxruntime-cpu") as p:
        p.set_image(echo_frames[0])
        (mask,), _ = p.predict(boxes=[[160, 60, 210, 125]])
    assert 0.1 < mask[60:125, 160:210].mean() < 0.95


def test_an_empty_frames_folder_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["bench", str(tiny_model_dir.path), "--out", str(tmp_path / "out"), "--frames", str(tmp_path / "empty")]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "frames" in err[0] and "Traceback" not in err[0]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["status"] == "error" and rep["errors"]


@BENCH_CLI
def test_repeatability_compares_two_runs_of_the_same_command(bench_run):
    import copy

    from medsam_edge.bench import benchmarks_md

    _, rep, out = bench_run
    again = copy.deepcopy(rep)
    # The same command writing elsewhere is still the same command.
    assert str(out) in rep["command"]
    again["command"] = rep["command"].replace(str(out), f"{out}_run2")
    lines = benchmarks_md.repeatability([rep, again])
    rows = [ln for ln in lines if ln.startswith("| ") and "speed-up" in ln]
    assert rows and all("| met |" in ln for ln in rows)
    # A second run whose median falls outside the first run's spread does not agree.
    row = next(r for r in again["rows"] if r.get("speedup_vs_reference") and r["name"] != "reference")
    sp = row["speedup_vs_reference"]["e2e"]
    sp["median"], sp["p5"], sp["p95"] = 10 * sp["p95"] + 1, 10 * sp["p95"] + 0.5, 10 * sp["p95"] + 2
    lines = benchmarks_md.repeatability([rep, again])
    assert any(f"{row['name']} e2e" in ln and "| not met |" in ln for ln in lines)
    # Another command is not a repeat.
    other = copy.deepcopy(rep)
    other["command"] += " --runs 9"
    assert benchmarks_md.repeatability([rep, other]) == []


@BENCH_CLI
def test_realtime_streaming_splits_threads(bench_run):
    _, rep, _ = bench_run
    (st,) = rep["streaming"]
    assert st["realtime_threads"].endswith("/1") and rep["long_run"]["threads"].endswith("/1")


def test_looped_real_time_rows_compare_every_pass_with_the_fresh_masks(tiny_model_dir, tmp_path):
    """A clip shorter than real-time mode's start-up is played back and forth: frame indices
    run past the clip's, and each answer is still judged against the fresh mask of its clip
    position."""
    from medsam_edge.bench import reuse
    from medsam_edge.runtime import Predictor

    clip = tmp_path / "clip.mp4"
    _moving_disc_clip(clip)
    with Predictor(tiny_model_dir.path, backend="onnxruntime-cpu") as pred, \
            Predictor(tiny_model_dir.path, backend="onnxruntime-cpu", realtime=True) as live:
        result = reuse.measure(pred, str(clip), [12, 16, 48, 48], n_frames=6, realtime_predictor=live, curve=False,
                               realtime_seconds=1.0, deterministic_rows=False)
    modes = [r["mode"] for r in result["rows"]]
    assert modes[0] == "reuse off" and len(modes) == 3 and all("30 frames back and forth" in m for m in modes[1:])
    assert [reuse.bounce(6)(i) for i in range(12)] == [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1]
    for row in result["rows"][1:]:
        indices = [s["index"] for s in row["samples"]]
        assert row["frames"] + row["dropped"] <= 30 and max(indices) >= 6  # past one pass of the clip
        assert row["dice_count"] == row["frames"]  # every answer found its fresh mask


def test_reference_stability_measures_how_the_fresh_masks_change_by_themselves():
    from medsam_edge.bench.reuse import reference_stability

    def disk(r: int) -> np.ndarray:
        yy, xx = np.mgrid[:64, :64]
        return (yy - 32) ** 2 + (xx - 32) ** 2 < r * r

    still = {i: [disk(10)] for i in range(12)}
    growing = {i: [disk(6 + i)] for i in range(12)}
    flicker = {i: [disk(10 if i % 2 else 14)] for i in range(12)}  # two answers, alternating
    assert all(v["mean"] == 1.0 and v["below"] == 0.0 for v in reference_stability(still, (1, 2, 5, 10)).values())
    g = reference_stability(growing, (1, 2, 5, 10))
    assert g["1"]["mean"] > g["2"]["mean"] > g["5"]["mean"] > g["10"]["mean"] and g["10"]["pairs"] == 2
    f = reference_stability(flicker, (1, 2))
    # Frames two apart give the same answer; neighbours differ by as much as two radii do.
    assert f["2"]["mean"] == 1.0 and f["1"]["below"] == 1.0 and f["1"]["mean"] == pytest.approx(2 * 100 / (100 + 196), abs=0.02)


def _stat_cpus() -> int:
    return sum(1 for line in Path("/proc/stat").read_text().splitlines() if line[:3] == "cpu" and line[3].isdigit())


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="CPU time by process needs Linux's /proc/stat")
def test_cpu_used_by_others_counts_another_process_and_not_this_ones_threads():
    import os
    import subprocess
    import sys
    import time

    from medsam_edge.bench.machine import cpu_clock, others_share

    start = cpu_clock()
    t = time.process_time()
    # This process's own work is its own, not another job's. os.times() counts whole clock ticks,
    # so spin two ticks past the half second the assertion asks for.
    while time.process_time() - t < 0.5 + 2 / os.sysconf("SC_CLK_TCK"):
        pass
    mine = cpu_clock()
    assert mine["own_s"] - start["own_s"] >= 0.5
    assert mine["busy_s"] - start["busy_s"] >= 0.45  # the machine saw it as busy time
    # Another process spinning through the whole window takes about one of the machine's CPUs.
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        start = cpu_clock()
        time.sleep(1.5)
        share = others_share(start)
    finally:
        spin.kill()
        spin.wait()
    assert share is not None and share >= 0.6 / _stat_cpus()
    assert others_share(None) is None and others_share(start, start) is None


def test_the_load_note_blames_other_processes_only_when_they_used_the_cpu():
    from medsam_edge.bench.report import CONTENTION_SHARE, contention_note, load_text

    busy_self = {"machine": {"cores": 2, "load_average": [3.7, 2.1, 1.0]}, "load_average_end": [3.4, 3.2, 2.4]}
    assert contention_note({**busy_self, "cpu_used_by_others": 0.004}) is None  # its own threads made the load
    assert "other processes used 30.0% of the CPU" in contention_note({**busy_self, "cpu_used_by_others": 0.3})
    assert contention_note({**busy_self, "cpu_used_by_others": CONTENTION_SHARE}) is None
    # A report from before the CPU-time figure has only the load, which counts the run's own threads.
    old = contention_note(busy_self)
    assert "own threads included" in old and "may have competed" in old
    assert contention_note({"machine": {"cores": 2, "load_average": [0.6, 0.7, 0.5]}, "load_average_end": [1.5]}) is None
    assert load_text({**busy_self, "cpu_used_by_others": 0.012}).endswith("other processes used 1.2% of the CPU during the run")
    assert "other processes" not in load_text(busy_self)
