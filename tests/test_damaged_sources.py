"""Damaged inputs read as far as they hold: a damaged middle of an MP4 is skipped and
counted, a file cut short says so, a DICOM header that claims more frames than its data
is refused up front, a cut JPEG frame inside a cine is a bad frame, and pydicom's own
tracebacks never reach the user."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from medsam_edge.errors import InputError
from medsam_edge.runtime.sources import open_source
from medsam_edge.runtime.sources.base import MAX_LOGGED_SKIPS
from medsam_edge.runtime.sources.dicom import decoder_failure

from dicom_files import make_dicom
from robust_helpers import cli, one_line_error, write_mp4

ECHO_FILE = get_testdata_file("examples_ybr_color.dcm", download=False)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4", frames=60)


def _read(path) -> tuple[list[int], object]:
    source = open_source(str(path))
    return [f.index for f in source], source


# -- video -----------------------------------------------------------------------------
def test_a_damaged_middle_is_skipped_and_the_rest_is_read(mp4, tmp_path):
    data = bytearray(mp4.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 20_000] = np.random.default_rng(1).integers(0, 256, 20_000, np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    indices, source = _read(damaged)
    assert source.frame_count == 60
    assert indices[-1] >= 55, indices  # it read on past the damage to the end
    assert source.skipped >= 1 and len(indices) + source.skipped >= 56
    assert indices == sorted(set(indices))


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_a_file_cut_short_says_it_ended_early(mp4, tmp_path, share, caplog):
    data = mp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * share)])
    with caplog.at_level(logging.WARNING):
        indices, source = _read(cut)
    assert 0 < len(indices) < 60
    assert source.skipped == 0  # frames missing at the end are not "skipped" frames
    assert source.truncated == (f"the file ended after {len(indices)} of the 60 frames its container "
                                "declares (cut short or damaged)")
    assert source.truncated in caplog.text


def test_a_whole_file_is_not_called_truncated(mp4):
    indices, source = _read(mp4)
    assert indices == list(range(60)) and source.truncated is None and source.skipped == 0


def test_the_run_summary_says_the_source_ended_early(tiny_model_dir, mp4, tmp_path):
    import json

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: len(mp4.read_bytes()) // 3])
    r = cli("run", str(tiny_model_dir.path), str(cut), "--box", "10,30,60,90", "--out", str(tmp_path / "out"),
            "--no-video", "--reuse", "exact", timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # docs/outputs-complete.md: a run over a cut source is not complete, and stopped says why.
    assert summary["complete"] is False and summary["source_truncated"].startswith("the file ended after")
    assert summary["stopped"] == f"the source ended early: {summary['source_truncated']}"
    assert summary["frames"] > 0 and json.loads(r.stdout.splitlines()[-2])["complete"] is False
    assert json.loads(r.stdout.splitlines()[-2])["source_truncated"] == summary["source_truncated"]


# -- DICOM -----------------------------------------------------------------------------
def _echo(**edits) -> pydicom.Dataset:
    ds = pydicom.dcmread(ECHO_FILE)
    for key, value in edits.items():
        setattr(ds, key, value)
    return ds


def test_number_of_frames_beyond_the_fragments_is_refused_at_once(tmp_path):
    path = tmp_path / "huge.dcm"
    _echo(NumberOfFrames=10**9).save_as(path)
    with pytest.raises(InputError, match=r"says 1000000000 frames but the compressed pixel data holds 30 fragments"):
        open_source(str(path))
    # The command under a memory and time bound: no per-frame log flood, no frame-times array for 10^9 frames.
    r = cli("run", str(tmp_path / "no-model"), str(path), "--box", "1,1,50,50", "--out", str(tmp_path / "o"),
            timeout=60)
    assert r.returncode == 2
    one_line_error(r, "says 1000000000 frames")
    assert len(r.stderr.splitlines()) < 5


def test_native_pixel_data_shorter_than_its_frame_count_is_refused(tmp_path):
    path = tmp_path / "native.dcm"
    make_dicom(path, frames=4)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 10**9
    ds.save_as(path)
    with pytest.raises(InputError, match="truncated: pixel data holds"):
        open_source(str(path))


@pytest.mark.parametrize("value", [0, -3])
def test_a_frame_count_below_one_is_refused(tmp_path, value):
    path = tmp_path / "zero.dcm"
    _echo(NumberOfFrames=value).save_as(path)
    with pytest.raises(InputError, match=f"NumberOfFrames \\(0028,0008\\) is {value}"):
        open_source(str(path))


def _echo_with_frame(tmp_path, index: int, replace) -> Path:
    ds = _echo()
    frames = list(generate_frames(ds.PixelData, number_of_frames=30))
    frames[index] = replace(frames[index])
    ds.PixelData = encapsulate(frames)
    path = tmp_path / "edited.dcm"
    ds.save_as(path)
    return path


def test_a_jpeg_frame_cut_short_is_a_counted_bad_frame(tmp_path):
    path = _echo_with_frame(tmp_path, 10, lambda f: f[: len(f) // 2])
    indices, source = _read(path)
    assert source.skipped == 1 and 10 not in indices and len(indices) == 29


def test_no_bundled_jpeg_cine_frame_is_taken_for_a_cut_one():
    indices, source = _read(ECHO_FILE)
    assert indices == list(range(30)) and source.skipped == 0


def test_undecodable_frames_say_why_in_one_readable_line(tmp_path):
    garbage = bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)) + b"\xff\xd9"
    path = _echo_with_frame(tmp_path, 12, lambda f: garbage)
    r = cli("run", str(tmp_path / "no-model"), str(path), "--box", "1,1,50,50", "--out", str(tmp_path / "o"))
    assert "Traceback" not in r.stderr  # pydicom's decoder tracebacks stay out (before: two per bad frame)
    try:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - the message pydicom raises, for the check below
    except Exception as exc:  # noqa: BLE001
        line = decoder_failure(exc)
    assert line.startswith("no decoder could read it (") and "\n" not in line and " at 0x" not in line
    assert "pylibjpeg:" in line and len(line) <= 300


def test_a_run_over_a_bad_frame_prints_no_library_traceback(tiny_model_dir, tmp_path):
    garbage = bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)) + b"\xff\xd9"
    path = _echo_with_frame(tmp_path, 3, lambda f: garbage)
    r = cli("run", str(tiny_model_dir.path), str(path), "--box", "160,60,210,125", "--out", str(tmp_path / "o"),
            "--max-frames", "5", "--no-video", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "libjpeg error" in r.stderr
    warnings = [line for line in r.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and "frame 3 skipped: cannot decode: no decoder could read it" in warnings[0]


def test_many_bad_frames_are_logged_a_few_times_then_counted(tmp_path, caplog):
    from medsam_edge.runtime.sources import ArraySource

    frames = [np.zeros((8, 8, 3), np.uint8)] + [np.zeros((0, 3), np.uint8)] * (MAX_LOGGED_SKIPS + 15)
    with caplog.at_level(logging.WARNING):
        source = ArraySource(frames)
        assert len(list(source)) == 1
    assert source.skipped == MAX_LOGGED_SKIPS + 15
    logged = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(logged) == MAX_LOGGED_SKIPS and "only counted" in logged[-1].getMessage()
