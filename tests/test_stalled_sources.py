"""Sources that stall end by themselves, and Ctrl-C ends them at any point (issue 25).

Real named pipes (os.mkfifo) with a writer thread in the test: one that never comes, one
that sends the whole clip and closes, one that stops part-way and holds the pipe open."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsam_edge.errors import InputError
from medsam_edge.runtime.sources import open_source
from medsam_edge.runtime.sources.video import VideoSource
from robust_helpers import check_outputs, cli, start_cli

FRAMES = 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    """An MJPG AVI: a format FFmpeg reads from a pipe (MP4 needs to seek)."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    rng = np.random.default_rng(0)
    for i in range(FRAMES):
        img = rng.integers(30, 90, (96, 96, 3), dtype=np.uint8)
        cv2.circle(img, (30 + 2 * i, 48), 15, (200, 200, 200), -1)
        w.write(img)
    w.release()
    return path.read_bytes()


class Writer:
    """Writes `data` into a FIFO from a thread, then holds it open until stop() (or closes)."""

    def __init__(self, fifo: Path, data: bytes, hold: bool) -> None:
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._write, args=(fifo, data, hold), daemon=True)
        self._thread.start()

    def _write(self, fifo: Path, data: bytes, hold: bool) -> None:
        try:
            with open(fifo, "wb") as f:  # blocks until the reader opens
                f.write(data)
                f.flush()
                if hold:
                    self.done.wait(300)
        except BrokenPipeError:
            pass

    def stop(self) -> None:
        self.done.set()


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def test_a_pipe_without_a_writer_fails_at_open_within_its_time_out(fifo):
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"no answer for 1 s while opening it \(the source stalled"):
        VideoSource(str(fifo), kind="pipe", open_timeout=1, read_timeout=1)
    assert time.monotonic() - t0 < 5


def test_a_pipe_that_sends_the_whole_clip_is_read_once_to_its_end(fifo, clip):
    Writer(fifo, clip, hold=False)
    with open_source(str(fifo), read_timeout=5) as source:  # opened once: no DICOM sniffing first
        frames = list(source)
    assert len(frames) == FRAMES and source.truncated is None and source.skipped == 0


def test_a_pipe_that_stops_part_way_ends_with_a_one_line_error(fifo, clip):
    writer = Writer(fifo, clip[: len(clip) // 2], hold=True)
    got = []
    t0 = time.monotonic()
    try:
        with pytest.raises(InputError, match=r"no answer for 1 s while reading"):
            for frame in VideoSource(str(fifo), kind="pipe", open_timeout=5, read_timeout=1):
                got.append(frame.index)
    finally:
        writer.stop()
    assert 0 < len(got) < FRAMES and time.monotonic() - t0 < 15


def test_a_named_pipe_cannot_loop_or_be_dicom(fifo, tmp_path):
    with pytest.raises(InputError, match="--loop needs a file"):
        open_source(str(fifo), loop=True)
    dcm = tmp_path / "pipe.dcm"
    os.mkfifo(dcm)
    with pytest.raises(InputError, match="DICOM needs a file"):
        open_source(str(dcm))


@pytest.mark.integration
def test_a_run_on_a_stalled_pipe_ends_by_itself_with_valid_outputs(fifo, clip, tiny_model_dir, tmp_path):
    writer = Writer(fifo, clip[: len(clip) // 2], hold=True)
    out = tmp_path / "out"
    try:
        r = cli("run", str(tiny_model_dir.path), str(fifo), "--box", "10,10,60,60", "--read-timeout", "2",
                "--out", str(out), timeout=180)
    finally:
        writer.stop()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "no answer for 2 s while reading" in r.stderr.strip().splitlines()[-1]
    summary = check_outputs(out)
    assert summary["complete"] is False and summary["frames"] > 0 and "stalled" in summary["stopped"]


@pytest.mark.integration
def test_ctrl_c_ends_a_run_waiting_on_a_stalled_pipe_at_once(fifo, clip, tiny_model_dir, tmp_path):
    writer = Writer(fifo, clip[: len(clip) // 2], hold=True)
    out = tmp_path / "out"
    proc = start_cli("run", str(tiny_model_dir.path), str(fifo), "--box", "10,10,60,60", "--read-timeout", "300",
                     "--no-video", "--out", str(out))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until the run has written what the pipe held
            jsonl = out / ".frames.jsonl.partial"
            if jsonl.exists() and len(jsonl.read_bytes().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        time.sleep(3)  # now waiting on the pipe
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10, "Ctrl-C took more than 10 s"
    finally:
        writer.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["stopped"].startswith("interrupted")
    check_outputs(out)
