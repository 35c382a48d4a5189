"""Sources: arrays, images, folders and video, the pixel conversions, timestamps and every
bad input (DICOM: tests/test_sources_dicom.py). Videos and images are written into
tmp_path here.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import bundled
from medsam_edge.errors import InputError
from medsam_edge.runtime.frame import is_blank
from medsam_edge.runtime.sources import ArraySource, ImageSource, frame_problem, open_source, to_rgb8
from medsam_edge.runtime.sources.video import VideoSource

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # RGB


def solid(rgb: tuple[int, int, int], height: int = 24, width: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (height, width, 3)).copy()


def write_png(path: Path, rgb_image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb_image, cv2.COLOR_RGB2BGR))
    return path


def write_video(path: Path, colours: list[tuple[int, int, int]], fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for rgb in colours:
        writer.write(cv2.cvtColor(solid(rgb, 48, 64), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def frames_of(spec, **kwargs):
    with open_source(spec, **kwargs) as source:
        return list(source), source


# ---------------------------------------------------------------- shared helpers


def test_frame_problem_accepts_pictures_and_names_what_is_wrong():
    assert frame_problem(np.zeros((4, 5), np.uint16)) is None
    assert frame_problem(np.zeros((4, 5, 4), np.float32)) is None
    assert "zero-size" in frame_problem(np.zeros((0, 5, 3), np.uint8))
    assert "shape" in frame_problem(np.zeros(7, np.uint8))
    assert "shape" in frame_problem(np.zeros((4, 5, 2), np.uint8))
    assert "dtype" in frame_problem(np.zeros((4, 5), object))
    assert "not an array" in frame_problem([[1, 2], [3, 4]])


def test_to_rgb8_swaps_bgr_and_drops_alpha():
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 7  # blue in OpenCV's order, some alpha
    rgb = to_rgb8(bgra, bgr=True)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 200)


def test_is_blank_allows_overlay_text_but_not_a_picture():
    black = np.zeros((200, 200, 3), np.uint8)
    assert is_blank(black)
    black[:2, :] = 255  # a ruler/label line along the top: 1 % of the screen
    assert is_blank(black)
    assert not is_blank(solid((128, 128, 128), 200, 200))
    assert not is_blank(next(iter(open_source(bundled("examples_rgb_color.dcm")))).image)


# ---------------------------------------------------------------- numpy arrays


def test_array_kinds_become_rgb_uint8():
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    (frame,), _ = frames_of(grey)
    assert frame.image.shape == (12, 16, 3) and frame.image.dtype == np.uint8
    assert (frame.image == grey[..., None]).all()

    rgba = np.dstack([solid(BLUE, 12, 16), np.full((12, 16), 9, np.uint8)])
    (frame,), _ = frames_of(rgba)  # HxWx4 is one picture, not four frames
    assert tuple(frame.image[0, 0]) == BLUE

    wide = np.linspace(1000, 3000, 12 * 16).reshape(12, 16).astype(np.uint16)
    (frame,), _ = frames_of(wide)
    assert frame.image.min() == 0 and frame.image.max() == 255


def test_array_stack_and_sequence_with_fps():
    stack = np.stack([solid(RED), solid(GREEN), solid(BLUE)])
    frames = list(ArraySource(stack, fps=10))
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2])
    assert [tuple(f.image[0, 0]) for f in frames] == [RED, GREEN, BLUE]
    greys = np.zeros((5, 8, 9), np.uint8)  # (T,H,W) grey stack
    frames, source = frames_of(greys)
    assert len(frames) == 5 and source.frame_count == 5 and source.fps is None


def test_bad_arrays_in_a_sequence_are_skipped_and_logged(caplog):
    seq = [solid(RED), np.zeros((0, 4, 3), np.uint8), solid(GREEN), np.zeros((4, 4, 7)), solid(BLUE)]
    with caplog.at_level(logging.WARNING):
        frames, source = frames_of(seq)
    assert source.skipped == 2
    assert [f.index for f in frames] == [0, 2, 4]  # skipped frames use up their index
    assert [tuple(f.image[0, 0]) for f in frames] == [RED, GREEN, BLUE]
    messages = [r.getMessage() for r in caplog.records]
    assert any("frame 1 skipped" in m and "zero-size" in m for m in messages)
    assert any("frame 3 skipped" in m and "shape" in m for m in messages)


def test_unusable_array_inputs_raise_input_error():
    with pytest.raises(InputError, match="zero-size"):
        open_source(np.zeros((0, 0), np.uint8))
    with pytest.raises(InputError, match="no readable frames"):
        open_source([])
    with pytest.raises(InputError, match="no readable frames"):
        open_source([np.zeros((3, 0, 3), np.uint8)])
    with pytest.raises(InputError, match="float"):
        open_source(3.5)


# ---------------------------------------------------------------- images and folders


def test_image_folder_natural_order_skips_a_garbage_file(tmp_path, caplog):
    write_png(tmp_path / "frame_1.png", solid(RED))
    (tmp_path / "frame_2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    write_png(tmp_path / "frame_3.png", solid(GREEN))
    write_png(tmp_path / "frame_10.png", solid(BLUE))  # after 3 by number, not by text
    (tmp_path / "notes.txt").write_text("not an image, not a frame")
    with caplog.at_level(logging.WARNING):
        frames, source = frames_of(tmp_path)
    assert source.skipped == 1 and source.frame_count == 4
    assert [f.index for f in frames] == [0, 2, 3]
    assert [tuple(f.image[5, 5]) for f in frames] == [RED, GREEN, BLUE]
    assert all(f.source == str(tmp_path) for f in frames)
    assert any("frame 1 skipped" in r.getMessage() and "frame_2.png" in r.getMessage()
               for r in caplog.records)


def test_image_files_16bit_and_rgba_are_normalised(tmp_path):
    ramp = np.linspace(1000, 3000, 24 * 32).reshape(24, 32).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "deep.png"), ramp)
    (frame,), source = frames_of(tmp_path / "deep.png")
    assert isinstance(source, ImageSource)
    assert frame.image.shape == (24, 32, 3) and frame.image.dtype == np.uint8
    assert frame.image.min() == 0 and frame.image.max() == 255
    bgra = np.dstack([cv2.cvtColor(solid(GREEN), cv2.COLOR_RGB2BGR), np.zeros((24, 32), np.uint8)])
    assert cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    (frame,), _ = frames_of(str(tmp_path / "alpha.png"))
    assert frame.image.shape == (24, 32, 3) and tuple(frame.image[0, 0]) == GREEN


def test_unusable_folders_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="holds no images"):
        open_source(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"no readable frames \(2 unreadable"):
        open_source(tmp_path)


# ---------------------------------------------------------------- video


def test_video_file_frames_colours_and_timestamps(tmp_path):
    path = write_video(tmp_path / "clip.avi", [RED, GREEN, BLUE] * 3 + [RED], fps=25.0)
    frames, source = frames_of(str(path))
    assert isinstance(source, VideoSource) and not source.is_live
    assert source.fps == pytest.approx(25.0) and source.frame_count == 10
    assert len(frames) == 10 and source.skipped == 0
    assert [f.timestamp for f in frames] == pytest.approx([i / 25.0 for i in range(10)], abs=1e-6)
    for frame, expected in zip(frames, [RED, GREEN, BLUE]):
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        # MJPG is lossy: the expected channel is high, the others low.
        assert np.abs(frame.image[24, 32].astype(int) - expected).max() < 40
    assert all(f.source == str(path) and f.captured_at > 0 for f in frames)


def test_video_loop_keeps_index_and_time_growing(tmp_path):
    path = write_video(tmp_path / "clip.avi", [GREEN] * 4, fps=10.0)
    with open_source(path, loop=True) as source:
        frames = list(itertools.islice(source, 10))
    assert [f.index for f in frames] == list(range(10))
    assert [f.meta["loop"] for f in frames] == [0] * 4 + [1] * 4 + [2] * 2
    assert [f.meta["position"] for f in frames] == [0, 1, 2, 3] * 2 + [0, 1]
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(10)], abs=1e-6)


def test_each_iteration_of_a_file_starts_again_and_close_ends_it(tmp_path):
    path = write_video(tmp_path / "clip.avi", [RED, GREEN, BLUE, RED], fps=10.0)
    source = open_source(path)
    first = list(itertools.islice(source, 2))  # abandoned halfway
    again = list(source)
    assert [f.meta["position"] for f in first] == [0, 1]
    assert [f.meta["position"] for f in again] == [0, 1, 2, 3]
    source.close()
    with pytest.raises(ValueError, match="closed"):
        list(source)


def test_unusable_video_inputs_raise_input_error(tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video")
    with pytest.raises(InputError, match="clip.mp4: OpenCV cannot open it as a video"):
        open_source(str(fake))
    with pytest.raises(InputError, match="missing.avi: no such file"):
        open_source(str(tmp_path / "missing.avi"))
    with pytest.raises(InputError, match="^99: camera cannot be opened"):
        open_source("99")
    with pytest.raises(InputError, match="stream cannot be opened") as error:
        open_source("rtsp://admin:hunter2@127.0.0.1:9/nothing-listens-here")
    assert "hunter2" not in str(error.value) and "rtsp://***@127.0.0.1:9" in str(error.value)


def test_gstreamer_pipeline_without_gstreamer_says_so():
    if "GStreamer:                   YES" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has GStreamer; the message under test is for builds without")
    with pytest.raises(InputError, match="no GStreamer support"):
        open_source("videotestsrc num-buffers=3 ! videoconvert ! appsink")
