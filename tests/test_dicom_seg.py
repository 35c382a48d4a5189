"""DICOM Segmentation output: which writer takes which source, round trips read back with
highdicom and pydicom, references, an end-to-end run with the tiny model and captured logs,
atomicity, bad input. Files: pydicom's bundled ultrasound, CT and MR files and the files
tests/dicom_files.py makes."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pydicom
import pytest
from dicom_files import (COLS, ENHANCED_US_VOLUME, ROWS, SECRET_ID, SECRET_NAME, US_IMAGE, hand_area,
                         make_dicom)
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsam_edge.errors import InputError
from medsam_edge.runtime import cli_args, dicom_seg, measure, spacing
from medsam_edge.runtime.dicom_seg import Algorithm, DicomSegSink
from medsam_edge.runtime.frame import Frame
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.result import FrameResult
from medsam_edge.runtime.segmenter import Encoded
from medsam_edge.runtime.sinks import MaskNpzSink

ALGORITHM = Algorithm("medsam_vit_tiny", "0123456789abcdef" * 4, "fp32", "onnxruntime-cpu")


def result(index: int, masks: np.ndarray, *, boxes=None, source: str = "test") -> FrameResult:
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    frame = Frame(image=np.zeros((h, w, 3), np.uint8), index=index, timestamp=index / 25, source=source,
                  meta={"position": index, "loop": 0})
    boxes = np.asarray(boxes if boxes is not None else [[1, 2, 30, 40]] * n, np.float32).reshape(-1, 4)
    return FrameResult(frame=frame, prompts=[Prompt.of(box=b) for b in boxes], masks=masks,
                       scores=np.full(n, 0.9, np.float32), reuse="fresh",
                       embedding=Encoded(None, (h, w), (h, w), index))


def random_masks(rng, count: int, h: int, w: int) -> np.ndarray:
    return rng.random((count, h, w)) > 0.6


def expected(written: dict[int, np.ndarray], number: int, segment: int, hw) -> np.ndarray:
    masks = written[number]
    return masks[segment] if segment < len(masks) else np.zeros(hw, bool)


def write_seg(tmp_path, source_path, written: dict[int, np.ndarray], **kwargs) -> DicomSegSink:
    """written: 1-based source frame number -> (N, H, W) masks."""
    sink = DicomSegSink(tmp_path / "segmentation.dcm", source_path, ALGORITHM, **kwargs)
    with sink:
        for number, masks in written.items():
            sink.write(result(number - 1, masks))
    return sink


def check_round_trip(seg_path, source_path, written: dict[int, np.ndarray]) -> None:
    """Read back with highdicom (by source frame) and pydicom (pixels and references)."""
    import highdicom as hd

    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    numbers = sorted(written)
    segments = max(len(m) for m in written.values())
    hw = (int(source.Rows), int(source.Columns))
    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == segments
    if int(source.get("NumberOfFrames") or 1) == 1:
        back = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=list(range(1, segments + 1)))
    else:
        back = seg.get_pixels_by_source_frame(source.SOPInstanceUID, numbers,
                                              segment_numbers=list(range(1, segments + 1)))
    assert back.shape == (len(numbers), *hw, segments)
    for i, number in enumerate(numbers):
        for k in range(segments):
            np.testing.assert_array_equal(back[i, :, :, k].astype(bool), expected(written, number, k, hw))
    # pydicom alone: every frame's pixels against the source frame it references.
    ds = pydicom.dcmread(seg_path)
    pixels = ds.pixel_array.reshape(-1, *hw).astype(bool)
    seen = set()
    shared = ds.SharedFunctionalGroupsSequence[0]  # highdicom puts what all frames share here
    for item, picture in zip(ds.PerFrameFunctionalGroupsSequence, pixels):
        item = {**{e.keyword: e.value for e in shared}, **{e.keyword: e.value for e in item}}
        ref = item["DerivationImageSequence"][0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        number = int(ref.get("ReferencedFrameNumber", 1))
        k = int(item["SegmentIdentificationSequence"][0].ReferencedSegmentNumber) - 1
        np.testing.assert_array_equal(picture, expected(written, number, k, hw))
        seen.add((number, k))
    assert seen == {(n, k) for n in numbers for k in range(segments)}  # skipped frames stay out
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    instance = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert instance.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.PatientName == source.PatientName and ds.Modality == "SEG"


# --- which writer, and round trips -------------------------------------------------------------

def test_ultrasound_cine_without_frame_of_reference_is_built_with_pydicom(tmp_path):
    path = get_testdata_file("examples_ybr_color.dcm", download=False)
    rng = np.random.default_rng(0)
    # Frames 3, 5-7, 9-29 were skipped; frame 4 had one prompt, the others two.
    written = {n: random_masks(rng, 1 if n == 4 else 2, 240, 320) for n in (1, 2, 4, 8, 30)}
    sink = write_seg(tmp_path, path, written)
    assert sink.writer == "pydicom" and "without a Frame of Reference" in sink.reason
    assert sink.outputs == [tmp_path / "segmentation.dcm"]
    check_round_trip(sink.path, path, written)


def test_the_segmentation_names_its_segments_and_the_algorithm(tmp_path):
    path = get_testdata_file("examples_ybr_color.dcm", download=False)
    written = {1: np.zeros((2, 240, 320), bool)}
    sink = DicomSegSink(tmp_path / "s.dcm", path, ALGORITHM, tracked=True)
    with sink:
        sink.write(result(0, written[1], boxes=[[160, 60, 210, 125], [10, 20, 50, 60]]))
    ds = pydicom.dcmread(sink.path)
    first = ds.SegmentSequence[0]
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["track 0", "track 1"]
    assert first.SegmentDescription == "tracked from box 160,60,210,125 on frame 1"
    algorithm = first.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medsam-edge medsam_vit_tiny"
    assert algorithm.AlgorithmVersion == ALGORITHM.version
    for value in (ALGORITHM.checkpoint_sha256, "fp32", "onnxruntime-cpu", "medsam_vit_tiny"):
        assert value in algorithm.AlgorithmParameters
    assert first.SegmentAlgorithmType == "SEMIAUTOMATIC" and ds.SoftwareVersions == ALGORITHM.version


def test_a_multiframe_cine_with_two_regions_round_trips_against_masks_npz(tmp_path):
    path, _ = make_dicom(tmp_path / "cine.dcm", frames=5)
    rng = np.random.default_rng(1)
    written = {n: random_masks(rng, 2, ROWS, COLS) for n in (1, 3, 5)}
    seg_sink, npz = DicomSegSink(tmp_path / "segmentation.dcm", path, ALGORITHM), MaskNpzSink(tmp_path / "masks.npz")
    with seg_sink, npz:
        for number, masks in written.items():
            seg_sink.write(result(number - 1, masks))
            npz.write(result(number - 1, masks))
    assert seg_sink.writer == "pydicom"
    d = np.load(tmp_path / "masks.npz")
    from_npz = np.unpackbits(d["masks"], axis=-1, count=int(d["masks_shape"][-1])).astype(bool)
    check_round_trip(seg_sink.path, path, {int(i) + 1: from_npz[t] for t, i in enumerate(d["index"])})


@pytest.mark.parametrize("name", ["examples_palette.dcm", "CT_small.dcm", "MR_small.dcm"])
def test_single_frame_sources_are_written_with_highdicom(tmp_path, name):
    path = get_testdata_file(name, download=False)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    rng = np.random.default_rng(2)
    written = {1: random_masks(rng, 3, int(source.Rows), int(source.Columns))}
    sink = write_seg(tmp_path, path, written)
    assert sink.writer == "highdicom" and sink.reason == "single-frame source"
    check_round_trip(sink.path, path, written)
    ds = pydicom.dcmread(sink.path, stop_before_pixels=True)
    assert ("FrameOfReferenceUID" in ds) == ("FrameOfReferenceUID" in source)
    if "FrameOfReferenceUID" in source:
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID


def test_the_highdicom_path_logs_no_header_values(tmp_path, caplog):
    path, _ = make_dicom(tmp_path / "single.dcm", frames=1, sop_class=US_IMAGE)
    caplog.set_level(logging.DEBUG)
    sink = write_seg(tmp_path, path, {1: np.ones((1, ROWS, COLS), bool)})
    assert sink.writer == "highdicom" and "written with highdicom" in caplog.text
    header = pydicom.dcmread(path, stop_before_pixels=True)
    for secret in ("Secretia", SECRET_ID, header.SOPInstanceUID, header.StudyInstanceUID):
        assert secret not in caplog.text


def test_a_file_without_spacing_writes_a_segmentation_and_reports_pixels_only(tmp_path, caplog):
    path, _ = make_dicom(tmp_path / "plain.dcm", frames=1, sop_class=US_IMAGE, regions=())
    written = {1: random_masks(np.random.default_rng(3), 1, ROWS, COLS)}
    sink = write_seg(tmp_path, path, written)
    assert sink.writer == "highdicom"
    check_round_trip(sink.path, path, written)
    from medsam_edge.runtime.sources import open_source

    with open_source(path) as source, caplog.at_level(logging.INFO):
        calibration = spacing.resolve_pixel_calibration(source)
    assert calibration is None and measure.measurements(written[1], calibration) == {}
    assert "pixel spacing unknown" in caplog.text and "areas are in pixels only" in caplog.text


def test_a_multiframe_source_with_a_frame_of_reference_is_written_with_highdicom(tmp_path):
    path, _ = make_dicom(tmp_path / "volume.dcm", frames=4, sop_class=ENHANCED_US_VOLUME, regions=(),
                         frame_of_reference=True, positions=True)
    rng = np.random.default_rng(4)
    written = {n: random_masks(rng, 2, ROWS, COLS) for n in (1, 2, 4)}  # frame 3 skipped
    sink = write_seg(tmp_path, path, written)
    assert sink.writer == "highdicom" and "patient coordinate system" in sink.reason
    check_round_trip(sink.path, path, written)
    ds = pydicom.dcmread(sink.path, stop_before_pixels=True)
    assert ds.FrameOfReferenceUID == pydicom.dcmread(path).FrameOfReferenceUID
    numbers = {int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
               for f in ds.PerFrameFunctionalGroupsSequence}
    assert numbers == {1, 2, 4}


def test_a_frame_of_reference_without_positions_takes_the_pydicom_path(tmp_path):
    path, _ = make_dicom(tmp_path / "cine_for.dcm", frames=3, frame_of_reference=True)
    written = {n: random_masks(np.random.default_rng(5), 1, ROWS, COLS) for n in (2, 3)}
    sink = write_seg(tmp_path, path, written)
    assert sink.writer == "pydicom" and "no plane positions" in sink.reason
    check_round_trip(sink.path, path, written)
    assert pydicom.dcmread(sink.path).FrameOfReferenceUID == pydicom.dcmread(path).FrameOfReferenceUID


def test_a_source_highdicom_refuses_falls_back_to_pydicom_and_says_why(tmp_path):
    private_class = "1.2.826.0.1.3680043.9.7433.9.1"  # not in highdicom's tables
    path, _ = make_dicom(tmp_path / "private.dcm", frames=1, sop_class=private_class)
    written = {1: random_masks(np.random.default_rng(8), 2, ROWS, COLS)}
    sink = write_seg(tmp_path, path, written)
    assert sink.writer == "pydicom" and sink.reason == "highdicom refused it (KeyError)"
    check_round_trip(sink.path, path, written)
    ref = pydicom.dcmread(sink.path).PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert "ReferencedFrameNumber" not in ref.SourceImageSequence[0]  # single-frame: the whole image


def test_masks_whose_size_is_not_a_multiple_of_8_pack_across_frame_boundaries():
    from medsam_edge.runtime.dicom_seg_iod import pack_frames

    rng = np.random.default_rng(6)
    frames = [rng.random((3, 5)) > 0.5 for _ in range(11)]  # 15 bits a frame
    packed = pack_frames(frames)
    assert len(packed) % 2 == 0 and len(packed) >= math.ceil(11 * 15 / 8)
    bits = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")[: 11 * 15]
    np.testing.assert_array_equal(bits.reshape(11, 3, 5).astype(bool), np.asarray(frames))


# --- an end-to-end run: tiny model, a cine with a corrupt frame, logs captured -----------------

def test_a_run_on_a_cine_with_a_bad_frame_leaves_it_out_and_logs_no_patient_data(
        tmp_path, tiny_model_dir, caplog, capfd):
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    from medsam_edge.runtime.prompts import Prompter
    from medsam_edge.runtime.schedule import PromptSchedule
    from medsam_edge.runtime.segmenter import Segmenter
    from medsam_edge.runtime.session import Session
    from medsam_edge.runtime.stream import Stream
    from medsam_edge.runtime.sinks import JsonlSink, MultiSink
    from medsam_edge.runtime.sources import open_source

    path, _ = make_dicom(tmp_path / "cine.dcm", frames=4, corrupt_frame=2)
    backend = OnnxruntimeBackend(tiny_model_dir.onnx("encoder"), tiny_model_dir.onnx("decoder"))
    out = tmp_path / "out"
    records = []
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = open_source(path)
        calibration = spacing.resolve_pixel_calibration(source)
        seg_sink = dicom_seg.dicom_seg_sink(source, out, tiny_model_dir, backend.describe())
        prompter = Prompter(PromptSchedule.constant([[10, 10, 60, 50], [90, 10, 150, 50]]), None)
        stats = measure.TrackStatistics()
        stream = Stream(Session(Segmenter(backend, tiny_model_dir.preprocess), prompter), source, owns_source=False)
        with source, MultiSink([seg_sink, JsonlSink(tmp_path / "frames.jsonl")]) as sinks:
            for r in measure.Measured(stream, calibration):
                record = r.record()
                stats.add_result(r)
                records.append((r.frame.index, r.masks.copy(), record))
                sinks.write(r)
        summary = stats.summary(calibration)
    assert source.skipped == 1 and [i for i, _, _ in records] == [0, 1, 3]
    check_round_trip(out / "segmentation.dcm", path, {i + 1: m for i, m, _ in records})
    parameters = pydicom.dcmread(out / "segmentation.dcm").SegmentSequence[0] \
        .SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert tiny_model_dir.manifest["checkpoint"]["sha256"] in parameters and "onnxruntime-cpu" in parameters
    assert summary["spacing"]["source"] == "ultrasound regions" and len(summary["tracks"]) == 2
    for _, masks, record in records:
        assert record["mask_area_mm2"] == [hand_area(m) for m in masks]
    text = caplog.text + "".join(capfd.readouterr()) + "".join(str(w.message) for w in caught)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    for secret in (SECRET_NAME, "Secretia", SECRET_ID, "ACC-SECRET-9", header.SOPInstanceUID,
                   header.StudyInstanceUID, header.SeriesInstanceUID):
        assert secret not in text
    assert "frame 2 skipped" in caplog.text and "written with pydicom" in caplog.text


# --- atomicity --------------------------------------------------------------------------------

def test_nothing_is_written_before_close_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = get_testdata_file("examples_ybr_color.dcm", download=False)
    sink = DicomSegSink(tmp_path / "segmentation.dcm", path, ALGORITHM)
    sink.write(result(0, np.ones((1, 240, 320), bool)))
    assert list(tmp_path.iterdir()) == []  # a run killed here leaves no file at all

    def half_then_fail(self, filename, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)  # bytes on disk, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", half_then_fail)
    with pytest.raises(OSError):
        sink.close()
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_midway_keeps_a_whole_segmentation_of_the_frames_done(tmp_path):
    path = get_testdata_file("examples_ybr_color.dcm", download=False)
    written = {1: np.ones((1, 240, 320), bool), 2: np.zeros((1, 240, 320), bool)}
    with pytest.raises(RuntimeError), DicomSegSink(tmp_path / "segmentation.dcm", path, ALGORITHM) as sink:
        for number, masks in written.items():
            sink.write(result(number - 1, masks))
        raise RuntimeError("the pipeline broke")
    check_round_trip(tmp_path / "segmentation.dcm", path, written)
    assert [p.name for p in tmp_path.iterdir()] == ["segmentation.dcm"]


# --- bad input --------------------------------------------------------------------------------

def test_a_source_without_identifiers_is_refused_in_one_line_before_any_frame(tmp_path):
    path, _ = make_dicom(tmp_path / "anon.dcm", frames=2, drop=("StudyInstanceUID", "SeriesInstanceUID"))
    with pytest.raises(InputError, match="no SeriesInstanceUID, StudyInstanceUID in the header") as info:
        DicomSegSink(tmp_path / "segmentation.dcm", path, ALGORITHM)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "segmentation.dcm").exists()


def test_sources_a_segmentation_cannot_reference_are_one_line_errors(tmp_path):
    from medsam_edge.runtime.sources import open_source

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="--dicom-seg needs a DICOM source"):
        dicom_seg.dicom_seg_sink(open_source(frames), tmp_path, None, {})
    looped = open_source(get_testdata_file("examples_ybr_color.dcm", download=False), loop=True)
    with pytest.raises(InputError, match="--loop"):
        dicom_seg.dicom_seg_sink(looped, tmp_path, None, {})
    cine, _ = make_dicom(tmp_path / "cine.dcm", frames=2)
    with pytest.raises(InputError, match="the file changed since it was opened"):
        DicomSegSink(tmp_path / "s.dcm", cine, ALGORITHM, sop_instance_uid=generate_uid())
    sink = DicomSegSink(tmp_path / "s.dcm", cine, ALGORITHM)
    with pytest.raises(InputError, match="masks are 8x4 but the source is 160x120"):
        sink.write(result(0, np.zeros((1, 4, 8), bool)))
    with pytest.raises(InputError, match="not one of the source's 2 frames"):
        sink.write(result(5, np.zeros((1, ROWS, COLS), bool)))


def test_frames_without_prompts_stay_out_and_no_prompt_at_all_writes_nothing(tmp_path, caplog):
    path = get_testdata_file("examples_ybr_color.dcm", download=False)
    with DicomSegSink(tmp_path / "none.dcm", path, ALGORITHM) as sink, caplog.at_level(logging.WARNING):
        sink.write(result(0, np.zeros((0, 240, 320), bool)))
    assert sink.outputs == [] and not (tmp_path / "none.dcm").exists()
    assert "no DICOM Segmentation is written" in caplog.text
    written = {2: np.ones((1, 240, 320), bool)}
    with DicomSegSink(tmp_path / "segmentation.dcm", path, ALGORITHM) as sink:
        sink.write(result(0, np.zeros((0, 240, 320), bool)))
        sink.write(result(1, written[2]))
    check_round_trip(sink.path, path, written)


def test_the_options_and_their_help(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    cli_args.add_dicom_seg(parser)
    cli_args.add_pixel_spacing(parser)
    args = parser.parse_args(["--dicom-seg", "--pixel-spacing", "0.2,0.3"])
    assert args.dicom_seg and args.pixel_spacing == spacing.PixelSize(0.2, 0.3, "--pixel-spacing")
    assert parser.parse_args([]).pixel_spacing is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--pixel-spacing", "zero"])
    assert "expected MM or ROW_MM,COL_MM" in capsys.readouterr().err
    text = " ".join(parser.format_help().split())
    assert "patient and study identifiers" in text and "ROW_MM,COL_MM" in text
