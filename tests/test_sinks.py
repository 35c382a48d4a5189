"""Sinks: overlay video, mask PNG/NPZ, JSONL, fan-out, and the .partial -> final rename."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsam_edge.errors import InputError
from medsam_edge.runtime.result import FrameResult
from medsam_edge.runtime.sinks import (
    JsonlSink,
    MaskNpzSink,
    MaskPngSink,
    MultiSink,
    OverlayVideoSink,
    Sink,
    open_sinks,
)

from frame_results import GREY, H, W, disk, make_result


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_overlay_video_reads_back_with_contour_colours(tmp_path, ext):
    path = tmp_path / f"overlay{ext}"
    two = ((48, 36, 18), (48, 92, 18))
    with OverlayVideoSink(path, fps=10) as sink:
        for i in range(4):
            sink.write(make_result(i, disks=two, reuse="fresh" if i == 0 else "near-repeat", staleness=i))
    frames = read_video(path)
    assert len(frames) == 4
    assert frames[0].shape == (H, W, 3)
    img = frames[2].astype(np.float32)  # BGR
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    edge0 = boundary(disk(H, W, 48, 36, 18))
    edge1 = boundary(disk(H, W, 48, 92, 18))
    # Box 0 is green, box 1 magenta; the grey input has no colour at all.
    assert (g - (r + b) / 2)[edge0].mean() > 60
    assert ((r + b) / 2 - g)[edge1].mean() > 60
    # Contours, not fills: the inside of the disk stays grey.
    inside = disk(H, W, 48, 36, 10)
    assert np.abs(img[inside] - GREY).mean() < 15


def test_overlay_resizes_frames_of_another_size(tmp_path):
    path = tmp_path / "overlay.mp4"
    with OverlayVideoSink(path, fps=5) as sink:
        sink.write(make_result(0))
        sink.write(make_result(1, h=48, w=64, disks=((24, 20, 10),)))
        sink.write(make_result(2, h=144, w=192, disks=((72, 60, 30),)))
    frames = read_video(path)
    assert [f.shape for f in frames] == [(H, W, 3)] * 3


def test_overlay_bad_extension_and_unopenable_writer(tmp_path):
    with pytest.raises(InputError, match="overlay.mkv"):
        OverlayVideoSink(tmp_path / "overlay.mkv", fps=10)
    with pytest.raises(InputError, match="frame rate"):
        OverlayVideoSink(tmp_path / "overlay.mp4", fps=0)
    missing = tmp_path / "no" / "such" / "dir" / "overlay.mp4"
    sink = OverlayVideoSink(missing, fps=10)
    with pytest.raises(InputError) as err:
        sink.write(make_result(0))
    assert str(missing) in str(err.value) and "mp4v" in str(err.value)
    sink.close()
    assert sink.outputs == []


def test_png_names_and_round_trip(tmp_path):
    results = [make_result(0, disks=((48, 36, 18), (48, 92, 12))), make_result(7, disks=((30, 30, 9),))]
    with MaskPngSink(tmp_path / "masks") as sink:
        for res in results:
            sink.write(res)
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == ["000000_0.png", "000000_1.png", "000007_0.png"]
    assert sorted(p.name for p in sink.outputs) == names
    for res in results:
        for b, mask in enumerate(res.masks):
            png = cv2.imread(str(tmp_path / "masks" / f"{res.frame.index:06d}_{b}.png"), cv2.IMREAD_UNCHANGED)
            assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
            np.testing.assert_array_equal(png == 255, mask)


def test_npz_unpacks_to_exactly_the_masks(tmp_path):
    w = 101  # not a multiple of 8, so the unpack must trim the padding bits
    results = [make_result(3, w=w, disks=((40, 30, 15), (60, 70, 20))),
               make_result(4, w=w, disks=((20, 80, 10),)),
               make_result(5, w=w, disks=())]
    path = tmp_path / "masks.npz"
    with MaskNpzSink(path) as sink:
        for res in results:
            sink.write(res)
    assert not path.with_name(".masks.npz.partial").exists()
    d = np.load(path)
    assert d["index"].tolist() == [3, 4, 5]
    assert d["count"].tolist() == [2, 1, 0]
    assert d["masks_shape"].tolist() == [3, 2, H, w]
    assert d["masks"].dtype == np.uint8 and d["masks"].shape == (3, 2, H, (w + 7) // 8)
    masks = np.unpackbits(d["masks"], axis=-1, count=int(d["masks_shape"][-1])).astype(bool)
    for t, res in enumerate(results):
        n = d["count"][t]
        np.testing.assert_array_equal(masks[t, :n], res.masks)
        assert not masks[t, n:].any()
        np.testing.assert_allclose(d["boxes"][t, :n], res.boxes)
        np.testing.assert_allclose(d["scores"][t, :n], res.scores, rtol=1e-6)
        assert np.isnan(d["boxes"][t, n:]).all() and np.isnan(d["scores"][t, n:]).all()


def test_npz_rejects_a_size_change_but_keeps_earlier_frames(tmp_path):
    path = tmp_path / "masks.npz"
    sink = MaskNpzSink(path)
    sink.write(make_result(0))
    with pytest.raises(InputError, match="frame 1"):
        sink.write(make_result(1, h=48, w=64, disks=((24, 20, 10),)))
    sink.close()
    d = np.load(path)
    assert d["index"].tolist() == [0]
    masks = np.unpackbits(d["masks"], axis=-1, count=int(d["masks_shape"][-1])).astype(bool)
    np.testing.assert_array_equal(masks[0], make_result(0).masks)


def test_jsonl_one_flushed_line_per_frame(tmp_path):
    path = tmp_path / "frames.jsonl"
    results = [make_result(i, reuse="near-repeat" if i % 2 else "fresh", staleness=i % 2) for i in range(3)]
    sink = JsonlSink(path)
    sink.write(results[0])
    sink.write(results[1])
    # Readable while running (flushed), under the partial name only.
    tail = (tmp_path / ".frames.jsonl.partial").read_text().splitlines()
    assert [json.loads(x)["index"] for x in tail] == [0, 1]
    assert not path.exists()
    sink.write(results[2])
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    for i, (line, res) in enumerate(zip(lines, results)):
        rec = json.loads(line)
        assert rec["index"] == i and rec["timestamp"] == pytest.approx(i / 10)
        assert rec["mask_area"] == [int(res.masks[0].sum())] and rec["mask_area"][0] > 1000
        assert rec["prompts"] == [{"box": [16.0, 24.0, 64.0, 72.0]}] and rec["score"] == [0.9]
        assert rec["reuse"] == ("near-repeat" if i % 2 else "fresh") and rec["embedding_frame"] == i - i % 2
        assert rec["latency_ms"] == {"decode": 1.5, "total": 3.25} and rec["backend"] == "test"
    assert json.loads(lines[1])["fresh"] is False and json.loads(lines[1])["staleness"] == 1


@pytest.mark.parametrize("masks", ["npz", "png"])
def test_only_partial_names_while_writing_and_final_names_after_close(tmp_path, masks):
    out = tmp_path / "run"
    sinks = open_sinks(out, video=True, masks=masks, jsonl=True, fps=12.5)
    for i in range(2):
        sinks.write(make_result(i))
    top = {p.name for p in out.iterdir()}
    expected_partial = {".overlay.partial.mp4", ".frames.jsonl.partial"}
    assert top == (expected_partial | {".masks.partial"} if masks == "png" else expected_partial)
    sinks.close()
    final = {"overlay.mp4", "frames.jsonl", "masks" if masks == "png" else "masks.npz"}
    assert {p.name for p in out.iterdir()} == final
    if masks == "png":
        assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000_0.png", "000001_0.png"]
    assert {out / n for n in final if n != "masks"} <= set(sinks.outputs)
    assert len(read_video(out / "overlay.mp4")) == 2


def test_close_after_an_exception_keeps_frames_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="decoder blew up"):
        with open_sinks(out, video=True, masks="npz", jsonl=True, fps=None) as sinks:
            for i in range(3):
                sinks.write(make_result(i))
            raise RuntimeError("decoder blew up")
    assert {p.name for p in out.iterdir()} == {"overlay.mp4", "masks.npz", "frames.jsonl"}
    assert len(read_video(out / "overlay.mp4")) == 3
    assert len((out / "frames.jsonl").read_text().splitlines()) == 3
    assert np.load(out / "masks.npz")["index"].tolist() == [0, 1, 2]


def test_killed_process_leaves_only_partial_names(tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, sys
        from frame_results import make_result
        from medsam_edge.runtime.sinks import open_sinks
        s = open_sinks({str(out)!r}, video=True, masks=sys.argv[1], jsonl=True, fps=10)
        for i in range(2):
            s.write(make_result(i))
        os._exit(9)  # no close, no cleanup: as if killed
    """)
    for masks, extra in (("npz", set()), ("png", {".masks.partial"})):
        # The child finds the helper as pytest does (pyproject's pythonpath = ["tests"]).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).parent),
                                                                          os.environ.get("PYTHONPATH"))))}
        proc = subprocess.run([sys.executable, "-c", script, masks], capture_output=True, text=True, timeout=120,
                              env=env)
        assert proc.returncode == 9, proc.stderr
        names = {p.name for p in out.iterdir()}
        assert names == {".overlay.partial.mp4", ".frames.jsonl.partial"} | extra
        if extra:  # the PNGs themselves are whole, inside the hidden folder
            assert sorted(p.name for p in (out / ".masks.partial").iterdir()) == ["000000_0.png", "000001_0.png"]
        shutil.rmtree(out)


class _FailingClose(Sink):
    def _write(self, result: FrameResult) -> None:
        pass

    def _finish(self) -> None:
        raise OSError("disk full")


def test_multisink_fans_out_and_closes_every_sink_even_if_one_fails(tmp_path):
    a, b = JsonlSink(tmp_path / "a.jsonl"), JsonlSink(tmp_path / "b.jsonl")
    multi = MultiSink([a, _FailingClose(), b])
    multi.write(make_result(0))
    multi.write(make_result(1))
    with pytest.raises(OSError, match="disk full"):
        multi.close()
    for name in ("a.jsonl", "b.jsonl"):
        assert len((tmp_path / name).read_text().splitlines()) == 2
    assert multi.outputs == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    with pytest.raises(RuntimeError, match="closed"):
        multi.write(make_result(2))
    multi.close()  # idempotent


def test_open_sinks_options(tmp_path):
    with pytest.raises(InputError, match="masks"):
        open_sinks(tmp_path / "x", video=False, masks="tiff", jsonl=False, fps=None)
    with open_sinks(tmp_path / "y", video=False, masks=None, jsonl=False, fps=None) as s:
        s.write(make_result(0))
    assert s.outputs == [] and list((tmp_path / "y").iterdir()) == []
    # A run with no frames: an empty log and an empty NPZ are complete; a video has no size.
    with open_sinks(tmp_path / "z", video=True, masks="npz", jsonl=True, fps=25) as s:
        pass
    assert {p.name for p in (tmp_path / "z").iterdir()} == {"frames.jsonl", "masks.npz"}
    d = np.load(tmp_path / "z" / "masks.npz")
    assert d["index"].shape == (0,) and d["masks_shape"].tolist() == [0, 0, 0, 0]
    assert os.path.getsize(tmp_path / "z" / "frames.jsonl") == 0
