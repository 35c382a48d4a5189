"""What the robustness tests share: the real CLI in a subprocess with a time and memory
bound, a small disk (a tmpfs the test mounts), a short MP4 written with OpenCV, and the
checks of the output rule (runtime/outputs.py): a run is complete exactly when
summary.json says so, and whatever sits under a final name is whole."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ECHO = "pydicom:examples_ybr_color.dcm"
ECHO_BOX = "160,60,210,125"
# Address space for one CLI run: the tiny model needs about 3 GB of it (onnxruntime and
# OpenCV map more than they touch); a runaway allocation fails instead of eating the machine.
MEMORY_LIMIT = 6 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*argv: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`medsam-edge ARGV` in a subprocess under MEMORY_LIMIT; a run past `timeout` fails the test."""
    try:
        return subprocess.run([sys.executable, "-m", "medsam_edge.cli", *argv], capture_output=True, text=True,
                              timeout=timeout, preexec_fn=_limit_memory, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"medsam-edge {' '.join(argv)} did not end within {timeout} s (a hang)")


def start_cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medsam_edge.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory)


def one_line_error(proc: subprocess.CompletedProcess, expected: str = "") -> str:
    """The last stderr line of an exit-2 run, checked to be ours and to contain `expected`."""
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("medsam-edge ") and ": error: " in last, proc.stderr
    assert expected in last, proc.stderr
    return last


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and len(path.read_bytes().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before writing {n} records: {proc.stderr.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{path}: fewer than {n} records after {timeout} s")


# -- the output rule -------------------------------------------------------------------
FINAL_NAMES = ("overlay.mp4", "frames.jsonl", "masks", "masks.npz", "segmentation.dcm")


def video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.isOpened():
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return n


def check_outputs(out: Path) -> dict | None:
    """Assert the output rule on `out`; returns summary.json (None if there is none).

    - summary.json, where present, parses and says complete true/false; complete true
      means frames.jsonl holds summary["frames"] records;
    - frames.jsonl, where present under its final name, is whole JSON records;
    - overlay.mp4 holds as many frames as frames.jsonl has records;
    - every PNG in masks/ decodes; masks.npz loads.
    """
    if not out.exists():
        return None
    summary = None
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        assert summary["complete"] in (True, False), summary
        assert "stopped" in summary and "last_frame" in summary, summary
    records = None
    if (out / "frames.jsonl").exists():
        records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
        if summary is not None and summary.get("last_frame") is not None:
            assert records and records[-1]["index"] == summary["last_frame"], (summary, records[-1:])
    if summary is not None and summary["complete"]:
        assert records is not None and len(records) == summary["frames"], summary
        assert not [p.name for p in out.iterdir() if ".partial" in p.name], list(out.iterdir())
    if (out / "overlay.mp4").exists() and records is not None:
        assert video_frames(out / "overlay.mp4") == len(records)
    if (out / "masks").is_dir():
        for png in (out / "masks").iterdir():
            assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None, png
    if (out / "masks.npz").exists():
        with np.load(out / "masks.npz") as d:
            assert len(d["index"]) == (len(records) if records is not None else len(d["index"]))
    if summary is None:
        # Killed outright before even the first summary: nothing may look finished.
        assert not [n for n in FINAL_NAMES if (out / n).exists()], list(out.iterdir())
    return summary


# -- a small disk ----------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(where: Path, size_kib: int):
    """A tmpfs of `size_kib` mounted at `where` (root only); skips the test where mounting
    is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): the disk-full "
                    "cases need root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` until about `leave` bytes stay free (0: completely full)."""
    filler = disk / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        block = b"\0" * 65536
        while True:
            try:
                if os.write(fd, block) == 0:
                    break
            except OSError as e:
                assert e.errno == errno.ENOSPC
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]  # the last blocks, down to the byte
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# -- real files to damage --------------------------------------------------------------
def write_mp4(path: Path, frames: int = 60, size=(160, 120), fps: float = 25.0, front_index: bool = True) -> Path:
    """A short mp4v MP4 of a bright disc moving over noise (every frame differs), with its
    index (moov) moved to the front as streaming tools write it, so damage in the middle
    leaves the container readable."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size[1], :size[0]]
    for i in range(frames):
        img = rng.integers(30, 90, (size[1], size[0], 3), dtype=np.uint8)
        img[(yy - size[1] // 2) ** 2 + (xx - 20 - i) ** 2 < 15 ** 2] = 200
        w.write(img)
    w.release()
    if front_index:
        path.write_bytes(faststart(path.read_bytes()))
    return path


def _atoms(buf, start: int = 0, end: int | None = None):
    end = len(buf) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", bytes(buf[i:i + 8]))
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", bytes(buf[i + 8:i + 16]))[0], 16
        elif size == 0:
            size = end - i
        yield kind, i, head, size
        i += size


def faststart(data: bytes) -> bytes:
    """The MP4 with its moov atom before mdat, chunk offsets (stco/co64) moved to match."""
    top = list(_atoms(data))
    _, start, _, size = next(a for a in top if a[0] == b"moov")
    moov = bytearray(data[start:start + size])

    def patch(lo: int, hi: int) -> None:
        for kind, i, head, n in _atoms(moov, lo, hi):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                patch(i + head, i + n)
            elif kind in (b"stco", b"co64"):
                width, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
                for k in range(struct.unpack(">I", bytes(moov[i + 12:i + 16]))[0]):
                    o = i + 16 + k * width
                    moov[o:o + width] = struct.pack(fmt, struct.unpack(fmt, bytes(moov[o:o + width]))[0] + len(moov))

    patch(8, len(moov))
    out = bytearray()
    for kind, i, _, n in top:
        if kind == b"mdat":
            out += moov
        if kind != b"moov":
            out += data[i:i + n]
    return bytes(out)
