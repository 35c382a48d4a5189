"""--out and the output rule: checked before any work, nothing half-written under a final
name, summary.json the one thing that says a run is complete, on a full disk and when a
real signal stops a real run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.errors import InputError
from medsam_edge.runtime import sinks as sinks_module
from medsam_edge.runtime.outputs import RUNNING, RunOutputs, StopRequest, Terminated
from medsam_edge.runtime.sinks import JsonlSink, MaskPngSink, OverlayVideoSink

from robust_helpers import (
    ECHO,
    ECHO_BOX,
    check_outputs,
    cli,
    fill,
    one_line_error,
    small_disk,
    start_cli,
    video_frames,
    wait_for_lines,
)
from frame_results import make_result

MIB = 1 << 20


def _noisy_result(i: int):
    """A 320x240 frame of noise: about 20 KB a frame in mp4v, so a small disk fills fast."""
    r = make_result(i, h=240, w=320, disks=((120, 100, 30),))
    r.frame.image[:] = np.random.default_rng(i).integers(0, 255, r.frame.image.shape, np.uint8)
    return r


def _write_until_full(sink, make, limit: int = 400) -> int:
    """Frames written before the sink raised OSError; fails if it never did."""
    for i in range(limit):
        try:
            sink.write(make(i))
        except OSError:
            return i
    pytest.fail(f"{type(sink).__name__} wrote {limit} frames on a full disk without an error")


# -- sinks on a disk that fills up -----------------------------------------------------
def test_jsonl_is_cut_back_to_whole_records_when_the_disk_fills(tmp_path):
    with small_disk(tmp_path / "disk", 256) as disk:
        fill(disk, 6000)
        sink = JsonlSink(disk / "frames.jsonl")
        written = _write_until_full(sink, make_result)
        sink.close()
        lines = (disk / "frames.jsonl").read_text().splitlines()
        assert len(lines) == written and [json.loads(x)["index"] for x in lines] == list(range(written))


def test_png_masks_are_whole_or_absent_when_the_disk_fills(tmp_path):
    with small_disk(tmp_path / "disk", 256) as disk:
        fill(disk, 5000)
        sink = MaskPngSink(disk / "masks")
        written = _write_until_full(sink, _noisy_result)
        sink.close()
        names = sorted(p.name for p in (disk / "masks").iterdir())
        assert names == [f"{i:06d}_0.png" for i in range(written)]  # no temporary file left either
        import cv2

        assert all(cv2.imread(str(disk / "masks" / n)) is not None for n in names)


def test_a_video_the_writer_could_not_finish_keeps_its_partial_name(tmp_path, monkeypatch):
    # The free-space check off: OpenCV's writer itself meets the full disk, silently in
    # OpenCV 4, with False in OpenCV 5; either way the file read back is short.
    monkeypatch.setattr(sinks_module, "MIN_FREE_BYTES", 0)
    with small_disk(tmp_path / "disk", 1024) as disk:
        fill(disk, 60_000)
        sink = OverlayVideoSink(disk / "overlay.mp4", 10)
        for i in range(60):
            try:
                sink.write(_noisy_result(i))
            except OSError:
                break
        with pytest.raises(InputError, match=r"holds \d+ of its \d+ frames .*not renamed"):
            sink.close()
        assert not (disk / "overlay.mp4").exists() and sink.partial.exists()


def test_the_video_stops_before_the_disk_is_full_and_holds_every_frame_it_took(tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        fill(disk, MIB + 100_000)
        sink = OverlayVideoSink(disk / "overlay.mp4", 10)
        with pytest.raises(OSError, match="no space left"):
            for i in range(60):
                sink.write(_noisy_result(i))
        sink.close()
        assert 0 < sink.frames < 60 and video_frames(disk / "overlay.mp4") == sink.frames


def test_summary_is_written_over_the_first_one_on_a_full_disk(tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        outputs = RunOutputs(disk / "out")
        outputs.open(video=False, masks=None, fps=None)
        assert json.loads((disk / "out" / "summary.json").read_text())["stopped"] == RUNNING
        fill(disk, 0)
        outputs.summary = {"complete": False, "stopped": "error: the disk is full", "last_frame": 7,
                           "started": outputs.started, "latency_ms": {"p50": 1.0} | {f"k{i}": i for i in range(99)}}
        outputs._write_summary()
        summary = json.loads((disk / "out" / "summary.json").read_text())
        assert summary == {"complete": False, "stopped": "error: the disk is full", "last_frame": 7,
                           "started": outputs.started}
        outputs.sinks.close()


# -- --out checked before any work -----------------------------------------------------
def test_unusable_out_directories_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "out", "which is a file"),
        (Path("/proc/medsam-edge-test/out"), "cannot write there"),
        (Path("/proc/self"), "cannot write there"),
        (Path(str(tmp_path / "nul") + "\0x"), "not a usable path"),
        (tmp_path / ("x" * 300), "File name too long"),
    ]
    for out, expected in cases:
        with pytest.raises(InputError, match=expected) as e:
            RunOutputs(out)
        assert "\n" not in str(e.value)


def test_a_full_disk_is_refused_before_the_run(tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        fill(disk, 200_000)
        with pytest.raises(InputError, match="the disk is full"):
            RunOutputs(disk / "out")
        r = cli("run", str(tmp_path / "model-not-read-yet"), ECHO, "--box", ECHO_BOX, "--out", str(disk / "out"))
        assert r.returncode == 2
        one_line_error(r, "the disk is full")


def test_an_earlier_run_is_refused_without_overwrite_even_a_killed_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".frames.jsonl.partial").write_text("{}\n")  # what a killed run leaves
    (out / ".masks.partial").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(InputError, match=r"holds an earlier run \(.*frames.jsonl.partial"):
        RunOutputs(out)
    RunOutputs(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# -- the whole run on a disk that fills ------------------------------------------------
def test_a_run_on_a_disk_that_fills_stops_with_one_line_and_says_so(tiny_model_dir, tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        fill(disk, MIB + 120_000)
        out = disk / "out"
        r = cli("run", str(tiny_model_dir.path), ECHO, "--box", ECHO_BOX, "--masks", "png", "--out", str(out),
                timeout=300)
        assert r.returncode == 2, r.stderr
        one_line_error(r, "the disk is full")
        summary = check_outputs(out)
        assert summary["complete"] is False and "no space left" in summary["stopped"], summary
        assert 0 <= summary["last_frame"] < 29


# -- real signals to a real run --------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_the_first_signal_waits_for_the_frame_and_the_second_stops_at_once(sig):
    # The handler is called as the interpreter would call it: a real signal to the pytest
    # process itself crashed it among the other tests' native threads. Real signals to a
    # real run are the next test's.
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        handler = signal.getsignal(sig)
        assert callable(handler) and handler is not before
        handler(sig, None)  # the first: recorded, nothing raised
        with pytest.raises(Terminated if sig == signal.SIGTERM else KeyboardInterrupt):
            stop.check()
        with pytest.raises(KeyboardInterrupt):
            handler(sig, None)  # the second: at once
    assert signal.getsignal(sig) is before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signalled_run_follows_the_rule(tiny_model_dir, tmp_path, sig):
    out = tmp_path / "out"
    proc = start_cli("run", str(tiny_model_dir.path), ECHO, "--box", ECHO_BOX, "--masks", "png", "--loop",
                     "--max-frames", "100000", "--out", str(out))
    try:
        wait_for_lines(out / ".frames.jsonl.partial", 2, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = check_outputs(out)
    assert summary is not None and summary["complete"] is False
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert summary["stopped"] == RUNNING
        assert {p.name for p in out.iterdir()} >= {".frames.jsonl.partial", ".overlay.partial.mp4",
                                                   ".masks.partial"}
        return
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted" if sig == signal.SIGINT else "stopped by SIGTERM")
    assert summary["stopped"] == ("interrupted (Ctrl-C)" if sig == signal.SIGINT else "stopped by SIGTERM")
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]
    n = summary["last_frame"] + 1
    assert n >= 2 and len((out / "frames.jsonl").read_text().splitlines()) == n
    assert video_frames(out / "overlay.mp4") == n
    assert sorted(os.listdir(out / "masks")) == [f"{i:06d}_0.png" for i in range(n)]
