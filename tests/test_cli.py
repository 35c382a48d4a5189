"""The `medsam-edge` command as a user runs it: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from medsam_edge.cli import main

ECHO = "pydicom:examples_ybr_color.dcm"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsam_edge.cli", *argv], capture_output=True, text=True)


def test_run_writes_video_masks_and_one_record_per_frame(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["run", str(tiny_model_dir.path), ECHO, "--box", "160,60,210,125", "--box", "125,128,200,170",
                 "--masks", "npz", "--out", str(out)])
    assert code == 0
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 30
    first = json.loads(lines[0])
    assert first["index"] == 0 and first["fresh"] and len(first["prompts"]) == 2
    assert first["prompts"][0] == {"box": [160.0, 60.0, 210.0, 125.0]}
    assert {"encode", "decode", "postprocess", "total"} <= set(first["latency_ms"])
    assert abs(json.loads(lines[1])["timestamp"] - 0.0333) < 1e-3  # from the DICOM FrameTime
    npz = np.load(out / "masks.npz")
    assert len(npz["index"]) == 30
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["stopped"] is None and summary["last_frame"] == 29
    assert summary["frames"] == 30 and summary["backend"] == "onnxruntime-cpu"
    assert summary["fresh"] + summary["reused"] == 30
    assert (out / "overlay.mp4").stat().st_size > 0
    assert not [p for p in out.iterdir() if "partial" in p.name]


def test_bad_run_inputs_are_one_line_errors(tiny_model_dir, tmp_path):
    md = str(tiny_model_dir.path)
    cases = [
        ((md, str(tmp_path / "missing.mp4"), "--box", "1,1,20,20"), "no such file"),
        ((md, ECHO, "--box", "1,1,20"), "expected four numbers"),
        ((md, ECHO, "--box", "50,50,10,10"), "inverted"),
        ((md, ECHO, "--box", "1000,1000,1200,1200"), "outside the 320x240 image"),
        ((md, ECHO, "--box", "nan,1,20,20"), "not a finite number"),
        ((md, ECHO), "no prompt"),
        ((str(tmp_path), ECHO, "--box", "1,1,20,20"), "no manifest.json"),
        ((md, ECHO, "--box", "1,1,20,20", "--backend", "tensorrt"), "not available here"),
        ((md, ECHO, "--box", "1,1,20,20", "--backend", "magic"), "unknown backend"),
    ]
    for k, (argv, expected) in enumerate(cases):
        r = _run("run", *argv, "--out", str(tmp_path / f"o{k}"))
        assert r.returncode == 2, (argv, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert expected in last, (argv, r.stderr)
        assert "Traceback" not in r.stderr


def test_info_lists_backends_and_why_missing():
    r = _run("info", "--json")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    by_name = {b["name"]: b for b in info["backends"]}
    assert by_name["onnxruntime-cpu"]["available"]
    for b in by_name.values():
        assert b["available"] or b["reason"]


def test_runtime_never_imports_torch(tiny_model_dir, tmp_path):
    code = (
        "import sys, runpy\n"
        "from medsam_edge.runtime import Predictor\n"
        "from medsam_edge.runtime.sources import open_source\n"
        f"p = Predictor({str(tiny_model_dir.path)!r})\n"
        f"frames = list(open_source({ECHO!r}))[:2]\n"
        "p.set_image(frames[0].image); p.predict([[10, 10, 100, 100]])\n"
        "import medsam_edge.runtime.command, medsam_edge.runtime.sinks, medsam_edge.runtime.realtime\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_full_size_vit_b_stream(vit_b_model_dir, echo_frames, tmp_path):
    """One stream at full size; its first mask against the PyTorch reference's (scikit-image resize)."""
    from medsam_edge.export.models import build_model
    from medsam_edge.export.reference import ReferencePredictor
    from medsam_edge.metrics import dice

    out = tmp_path / "vit_b_run"
    box = [160.0, 60.0, 210.0, 125.0]
    code = main(["run", str(vit_b_model_dir.path), ECHO, "--box", ",".join(map(str, box)), "--max-frames", "3",
                 "--masks", "npz", "--out", str(out), "--no-video"])
    assert code == 0
    records = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert len(records) == 3 and records[0]["fresh"]
    assert all(r["fresh"] or r["embedding_frame"] == 0 for r in records)
    npz = np.load(out / "masks.npz")
    shape = tuple(npz["masks_shape"])
    ours = np.unpackbits(npz["masks"], axis=-1, count=shape[-1]).astype(bool)[0, 0]
    # The export's random weights are seed 0: the reference rebuilds them.
    ref = ReferencePredictor(build_model("medsam_vit_b", seed=0), vit_b_model_dir.preprocess)
    ref.set_image(echo_frames[0])
    ref_mask = ref.predict(np.array([box]))[0][0]
    assert ref_mask.sum() > 0
    assert dice(ours, ref_mask) > 0.95


def test_run_writes_a_dicom_segmentation_and_areas_in_mm(tiny_model_dir, tmp_path):
    """--dicom-seg on a DICOM cine: the Segmentation reads back to the same masks as masks.npz;
    --pixel-spacing on a picture without calibration gives every record its mm fields."""
    import pydicom

    out = tmp_path / "seg"
    code = main(["run", str(tiny_model_dir.path), ECHO, "--box", "100,40,260,200", "--max-frames", "4",
                 "--masks", "npz", "--dicom-seg", "--no-video", "--out", str(out)])
    assert code == 0
    seg = pydicom.dcmread(out / "segmentation.dcm")
    npz = np.load(out / "masks.npz")
    masks = np.unpackbits(npz["masks"], axis=-1, count=int(npz["masks_shape"][-1])).astype(bool)[:, 0]
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) == 4
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), masks)
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2

    for k in range(2):
        cv2.imwrite(str(frames / f"{k}.png"), np.full((64, 80, 3), 60 + k, np.uint8))
    out2 = tmp_path / "mm"
    assert main(["run", str(tiny_model_dir.path), str(frames), "--box", "10,10,60,50", "--pixel-spacing", "0.5",
                 "--no-video", "--out", str(out2)]) == 0
    for line in (out2 / "frames.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["mask_area_mm2"] == [rec["mask_area"][0] * 0.25]
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["measurements"]["spacing"]["source"] and len(summary["measurements"]["tracks"]) == 1
