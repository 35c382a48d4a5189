"""DICOM sources: pydicom's bundled files (shipped inside the pydicom wheel, so no network
and no /work/shared) and files made here: colour models, transfer syntaxes, bit depths,
timing, corrupt frames, identifiers that must never reach a log, and every bad input.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from dicom_files import bundled
from medsam_edge.errors import InputError
from medsam_edge.runtime.sources import open_source
from medsam_edge.runtime.sources.dicom import DicomSource

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # RGB


def frames_of(spec, **kwargs):
    with open_source(spec, **kwargs) as source:
        return list(source), source


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
