"""Sources: every input kind, the pixel conversions, timestamps and every bad input.

DICOM inputs are pydicom's bundled test files (shipped inside the pydicom wheel, so no
network and no /work/shared); videos and images are written into tmp_path here.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from medsam_edge.errors import InputError
from medsam_edge.runtime.sources.dicom import DicomSource
from medsam_edge.runtime.frame import is_blank
from medsam_edge.runtime.sources import ArraySource, ImageSource, frame_problem, open_source, to_rgb8
from medsam_edge.runtime.sources.video import VideoSource

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # RGB


def bundled(name: str) -> str:
    path = get_testdata_file(name, download=False)  # never reach for the network
    assert path is not None, f"{name} is not bundled with this pydicom"
    return str(path)


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


# ---------------------------------------------------------------- DICOM


def test_ultrasound_cine_ybr_jpeg_is_rgb_with_header_timing():
    frames, source = frames_of("pydicom:examples_ybr_color.dcm")
    assert isinstance(source, DicomSource) and not source.is_live
    assert source.description == bundled("examples_ybr_color.dcm")
    assert source.frame_count == 30 and len(frames) == 30 and source.skipped == 0
    assert source.time_source == "FrameTime" and source.fps == pytest.approx(1000 / 33.333)
    assert [f.timestamp for f in frames] == pytest.approx([i * 0.033333 for i in range(30)])
    image = frames[15].image.astype(int)
    assert image.shape == (240, 320, 3) and frames[15].image.dtype == np.uint8
    # A B-mode picture is grey: in RGB its channels agree. Left as YBR, chroma sits
    # near 128 while luma varies, and almost no pixel would pass this.
    grey = (np.abs(image[..., 0] - image[..., 1]) <= 6) & (np.abs(image[..., 1] - image[..., 2]) <= 6)
    assert grey.mean() > 0.9


def test_looping_cine_continues_index_and_time():
    with open_source("pydicom:examples_ybr_color.dcm", loop=True) as source:
        frames = list(itertools.islice(source, 33))
    assert [f.index for f in frames] == list(range(33))
    assert [f.meta["loop"] for f in frames[29:]] == [0, 1, 1, 1]
    assert [f.timestamp for f in frames[28:]] == pytest.approx([i * 0.033333 for i in range(28, 33)])
    np.testing.assert_array_equal(frames[30].image, frames[0].image)


@pytest.mark.parametrize("name", [
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
    "SC_rgb_jpeg_dcmtk.dcm",             # JPEG baseline, YBR_FULL
    "SC_rgb_rle.dcm",                    # RLE, RGB
    "SC_rgb_rle_16bit.dcm",              # RLE, 16-bit RGB scaled by bit depth
])
def test_known_colour_bars_come_out_in_rgb_order(name):
    (frame,), _ = frames_of(bundled(name))
    bands = {5: RED, 25: GREEN, 45: BLUE, 65: (0, 0, 0), 95: (255, 255, 255)}
    for row, expected in bands.items():
        assert np.abs(frame.image[row, 50].astype(int) - expected).max() <= 6, (row, expected)


def test_palette_colour_lut_is_applied_and_scaled_to_8_bits():
    (frame,), _ = frames_of(bundled("examples_palette.dcm"))
    image = frame.image.astype(int)
    assert frame.image.shape == (350, 800, 3) and frame.image.dtype == np.uint8
    assert image.max() == 255  # 16-bit LUT entries brought to 8 bits, not wrapped by a cast
    coloured = (image[..., 0] != image[..., 1]) | (image[..., 1] != image[..., 2])
    assert coloured.mean() > 0.05  # the index image alone would be grey everywhere


def test_16bit_mr_uses_its_window_and_ct_without_one_uses_min_max():
    raw = pydicom.dcmread(bundled("MR_small.dcm")).pixel_array.astype(int)  # window 600/1600
    (frame,), _ = frames_of(bundled("MR_small.dcm"))
    out = frame.image[..., 0].astype(int)
    # Min-max would put 1400 near 160 (the maximum is 2145); the window saturates it.
    assert (out[raw >= 600 + 800] == 255).all() and (out[raw <= 1300] < 250).all()
    order = np.argsort(raw, axis=None, kind="stable")
    assert (np.diff(out.ravel()[order]) >= 0).all()  # windowing keeps order
    assert out.min() > 0  # the darkest MR pixel (127) sits inside the window
    (ct,), _ = frames_of(bundled("CT_small.dcm"))
    assert ct.image.min() == 0 and ct.image.max() == 255


@pytest.mark.parametrize("name", [
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
])
def test_lossless_transfer_syntaxes_decode_to_the_same_frame(name):
    (reference,), _ = frames_of(bundled("MR_small.dcm"))
    (frame,), _ = frames_of(bundled(name))
    np.testing.assert_array_equal(frame.image, reference.image)


def test_lossy_jpeg2000_16bit_decodes():
    (frame,), _ = frames_of(bundled("JPEG2000.dcm"))
    assert frame.image.shape == (1024, 256, 3) and frame.image.dtype == np.uint8
    assert frame.image.max() == 255


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    (normal,), _ = frames_of(bundled("MR_small.dcm"))
    (inverted,), _ = frames_of(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(inverted.image, 255 - normal.image)


@pytest.mark.parametrize("edit, times, fps, time_source", [
    ({"FrameTimeVector": [0, 50, 50, 100] + [50] * 26}, [0, 0.05, 0.1, 0.2, 0.25], 29 / 1.5, "FrameTimeVector"),
    ({"CineRate": 10}, [0, 0.1, 0.2, 0.3, 0.4], 10.0, "CineRate"),
    ({"RecommendedDisplayFrameRate": 20}, [0, 0.05, 0.1, 0.15, 0.2], 20.0, "RecommendedDisplayFrameRate"),
    ({}, [0, 1, 2, 3, 4], None, "index"),
])
def test_frame_time_fallbacks(tmp_path, edit, times, fps, time_source):
    ds = pydicom.dcmread(bundled("examples_ybr_color.dcm"))
    del ds.FrameTime
    for keyword, value in edit.items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / "cine.dcm")
    with open_source(tmp_path / "cine.dcm") as source:
        stamps = [f.timestamp for f in itertools.islice(source, 5)]
        assert source.time_source == time_source
        assert source.fps == (pytest.approx(fps) if fps else None)
    assert stamps == pytest.approx(times)


def corrupt_frame(ds: pydicom.Dataset, index: int) -> None:
    fragments = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    fragments[index] = b"\xff\xd8" + b"\x00" * (len(fragments[index]) - 2)
    ds.PixelData = encapsulate(fragments)


def test_corrupt_cine_frame_is_skipped_not_raised(tmp_path, caplog):
    ds = pydicom.dcmread(bundled("examples_ybr_color.dcm"))
    corrupt_frame(ds, 10)
    ds.save_as(tmp_path / "cine.dcm")
    with caplog.at_level(logging.WARNING):
        frames, source = frames_of(tmp_path / "cine.dcm")
    assert source.skipped == 1 and len(frames) == 29
    assert 10 not in [f.index for f in frames] and frames[-1].index == 29
    assert frames[10].timestamp == pytest.approx(11 * 0.033333)  # time stays with its frame
    assert any("frame 10 skipped" in r.getMessage() for r in caplog.records)


def test_no_patient_identifier_reaches_frames_logs_or_errors(tmp_path, caplog):
    identifiers = {"PatientName": "Doe^Jane", "PatientID": "PID-271828",
                   "PatientBirthDate": "19700101", "OtherPatientIDs": "OID-314159",
                   "InstitutionName": "St Example Hospital"}
    ds = pydicom.dcmread(bundled("examples_ybr_color.dcm"))
    for keyword, value in identifiers.items():
        setattr(ds, keyword, value)
    corrupt_frame(ds, 3)  # a skipped frame makes the source log about this file
    ds.save_as(tmp_path / "cine.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((tmp_path / "cine.dcm").read_bytes()[:60000])
    with caplog.at_level(logging.DEBUG):
        frames, _ = frames_of(tmp_path / "cine.dcm")
        with pytest.raises(InputError) as error:
            open_source(truncated)
    texts = [f.source + repr(f.meta) for f in frames] + [str(error.value)]
    texts += [r.getMessage() for r in caplog.records]
    # ...and the bundled file's own identifiers, read from its header.
    original = pydicom.dcmread(bundled("examples_ybr_color.dcm"))
    values = list(identifiers.values()) + [str(original.PatientName), str(original.PatientID)]
    (frame,), _ = frames_of(bundled("MR_small.dcm"))
    texts.append(frame.source + repr(frame.meta))
    values += ["CompressedSamples^MR1", "4MR1"]
    for value in values:
        assert not any(value in text for text in texts), value


def test_unusable_dicom_inputs_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="gone.dcm: no such file"):
        open_source(str(tmp_path / "gone.dcm"))
    cine = Path(bundled("examples_ybr_color.dcm")).read_bytes()
    (tmp_path / "half.dcm").write_bytes(cine[: len(cine) // 2])  # JPEG cine cut in half
    with pytest.raises(InputError, match="half.dcm: the file is truncated"):
        open_source(tmp_path / "half.dcm")
    mr = Path(bundled("MR_small.dcm")).read_bytes()
    (tmp_path / "half_mr.dcm").write_bytes(mr[: len(mr) // 2])  # native pixel data cut
    with pytest.raises(InputError, match=r"half_mr.dcm: the file is truncated: pixel data holds \d+ of 8192"):
        open_source(tmp_path / "half_mr.dcm")
    with pytest.raises(InputError, match=r"rtplan.dcm: no Pixel Data .*RT Plan Storage"):
        open_source(bundled("rtplan.dcm"))
    (tmp_path / "text.dcm").write_text("plain text, not DICOM")
    with pytest.raises(InputError, match="text.dcm: not a DICOM file"):
        open_source(tmp_path / "text.dcm")
    ds = pydicom.dcmread(bundled("examples_ybr_color.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # H.264 in DICOM
    ds.save_as(tmp_path / "h264.dcm")
    with pytest.raises(InputError, match=r"h264.dcm: transfer syntax 1.2.840.10008.1.2.4.102 "
                                         r"\(MPEG-4 AVC/H.264.*\) cannot be decoded"):
        open_source(tmp_path / "h264.dcm")


def test_missing_decoder_plugin_names_the_syntax_and_the_fix():
    # A child interpreter where neither pylibjpeg nor pyjpegls (which highdicom brings)
    # can be imported, as on a machine that never installed them; JPEG-LS then has no
    # decoder at all.
    code = ("import sys; sys.modules['pylibjpeg'] = None; sys.modules['jpeg_ls'] = None\n"
            "from medsam_edge.errors import InputError\n"
            "from medsam_edge.runtime.sources import open_source\n"
            "try:\n    open_source(sys.argv[1])\n"
            "except InputError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code, bundled("MR_small_jpeg_ls_lossless.dcm")],
                            capture_output=True, text=True, timeout=60)
    message = result.stdout.strip()
    assert message.startswith(bundled("MR_small_jpeg_ls_lossless.dcm") + ": ")
    assert "transfer syntax 1.2.840.10008.1.2.4.80 (JPEG-LS Lossless" in message
    assert "cannot be decoded: install a plugin such as" in message and "\n" not in message
    assert "pylibjpeg (pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1)" in message


def test_pydicom_spec_rejects_unknown_and_path_like_names():
    with pytest.raises(InputError, match="pydicom:no_such_file.dcm: not among"):
        open_source("pydicom:no_such_file.dcm")
    with pytest.raises(InputError, match="bare file name"):
        open_source("pydicom:../MR_small.dcm")
