"""Calibration's inputs: frames sampled over sources with a hold-out, the frame cache, the
reader protocol, range frames spread over every source, and the bad input `calibrate`
refuses in one line without touching the model directory (the files it writes:
tests/test_calibration.py). Frames are synthetic pictures and pydicom's bundled cine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsam_edge.calibration.frames import FrameReader, sample_frames
from medsam_edge.cli import main
from medsam_edge.contract import IMAGE
from medsam_edge.manifest import load_model_dir
from medsam_edge.runtime.preprocess import preprocess

from conftest import DICOM
from lesions import lesion_pictures as _pictures


@pytest.fixture
def tiny(md) -> Path:
    """A private copy of the tiny export (conftest's md): the bad-input test checks nothing is written into it."""
    return md.path


@pytest.fixture(scope="module")
def data(calibration_frames) -> dict:
    return calibration_frames


# --- frames -------------------------------------------------------------------------


def test_frames_spread_over_sources_with_holdout_and_exact_preprocessing(tiny, data):
    pre = load_model_dir(tiny).preprocess
    fs = sample_frames([str(data["img"]), DICOM], pre, count=12, holdout=0.34, min_frames=4)
    by_source = {m["source"] for m in fs.meta}
    assert by_source == {str(data["img"]), DICOM}
    # Two sources: the second is held out whole, so the report judges frames of a source
    # the calibration never saw.
    d = fs.describe()
    assert d["calibration_sources"] == [str(data["img"])] and d["holdout_sources"] == [DICOM]
    assert d["holdout_sources_unseen"] and len(fs.calibration) == 8 and len(fs.holdout) == 4
    # Spread over the cine: first and last sampled positions far apart.
    cine = [m["index"] for m in fs.meta if m["source"] == DICOM]
    assert len(cine) == 4 and max(cine) - min(cine) >= 20
    # One source alone: its own frames are split, every third held out.
    one = sample_frames([DICOM], pre, count=9, holdout=0.34, min_frames=4)
    assert len(one.holdout) == 3 and not one.describe()["holdout_sources_unseen"]
    # The tensor is what the runtime itself makes from the original picture.
    i = next(k for k, m in enumerate(fs.meta) if m["source"] != DICOM)
    original = cv2.cvtColor(cv2.imread(str(data["img"] / fs.meta[i]["name"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(fs.tensor(i), preprocess(original, pre).tensor)


def test_frames_cache_is_used_on_rerun(tiny, data, tmp_path, monkeypatch):
    from medsam_edge.calibration import frames as frames_mod

    pre = load_model_dir(tiny).preprocess
    first = sample_frames([str(data["img"])], pre, count=8, cache_dir=tmp_path, min_frames=4)
    assert len(list(tmp_path.glob("frames-*.npz"))) == 1

    def no_decoding(spec, **kw):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(frames_mod, "open_source", no_decoding)
    again = sample_frames([str(data["img"])], pre, count=8, cache_dir=tmp_path, min_frames=4)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.meta == first.meta


def test_reader_follows_the_calibration_reader_protocol(tiny, data):
    fs = sample_frames([str(data["img"])], load_model_dir(tiny).preprocess, count=8, min_frames=4)
    r = FrameReader(fs)
    feeds = list(iter(r.get_next, None))
    assert len(feeds) == len(fs.calibration) == len(r)
    assert set(feeds[0]) == {IMAGE} and feeds[0][IMAGE].shape == (1, 3, 1024, 1024)
    assert r.get_next() is None
    r.rewind()
    np.testing.assert_array_equal(r.get_next()[IMAGE], feeds[0][IMAGE])


# --- bad input ----------------------------------------------------------------------


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(["calibrate", *map(str, argv)])
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_exit_2(tiny, tmp_path, capsys):
    empty, few = tmp_path / "empty", tmp_path / "few"
    empty.mkdir()
    _pictures(few, None, 2)
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"not a video" * 100)
    plain = tmp_path / "plain"
    plain.mkdir()
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((tiny / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    cache = ["--cache-dir", tmp_path / "c"]
    cases = [
        ((tiny, "--frames", empty, *cache), "no images"),
        ((tiny, "--frames", few, *cache), "too few frames"),
        ((tiny, "--frames", junk, *cache), "cannot open it as a video"),
        ((tiny, "--frames", tmp_path / "missing.mp4", *cache), "no such file"),
        ((plain, "--frames", few), "no manifest.json"),
        ((old, "--frames", few), "format version 99"),
        ((tiny, "--frames", few, "--precision", "int4"), "--precision"),
        ((tiny, "--frames", few, "--search-margin", "0"), "--search-margin"),
        ((tiny, "--frames", few, "--search-backends", "openvino-cpu"), "onnxruntime-cpu first"),
        ((tiny, "--frames", few, "--search-backends", "onnxruntime-cpu,warp-drive"), "--search-backends"),
    ]
    for argv, words in cases:
        code, err = _cli(capsys, *argv)
        assert code == 2, (argv, err)
        # Progress may say which step failed; the error itself is one line, the last.
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and words in errors[0], err
    assert sorted(p.name for p in tiny.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]


def test_failed_run_leaves_model_dir_untouched(tiny, data, tmp_path, capsys):
    md_path = tmp_path / "tiny"
    shutil.copytree(tiny, md_path)
    bad_masks = tmp_path / "masks"
    bad_masks.mkdir()
    for f in data["img"].iterdir():  # masks of the wrong size: fails after staging began
        cv2.imwrite(str(bad_masks / f.name), np.zeros((5, 5), np.uint8))
    before = {p.name: p.stat().st_mtime_ns for p in md_path.iterdir()}
    code, err = _cli(capsys, md_path, "--frames", data["img"], "--masks", bad_masks, "--precision", "fp16",
                     "--cache-dir", data["cache"], "--frames-count", 10)
    assert code == 2 and "mask is 5x5" in err
    assert {p.name: p.stat().st_mtime_ns for p in md_path.iterdir()} == before


def test_range_frames_are_spread_over_every_source():
    from medsam_edge.calibration.frames import FrameSet

    meta = [{"source": s, "split": "calibration"} for s in ["a"] * 10 + ["b"] * 3 + ["c"] * 1]
    fs = FrameSet(np.zeros((len(meta), 1, 1, 3), np.uint8), meta, None)
    picked = fs.spread(fs.calibration, 5)
    assert len(picked) == 5 and {meta[i]["source"] for i in picked} == {"a", "b", "c"}
    # a (frames 0-9) gives two, b (10-12) two, c (13) its one: each share spread over its source.
    assert picked == [0, 9, 10, 12, 13]
    assert fs.spread(fs.calibration, 100) == fs.calibration
