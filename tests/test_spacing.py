"""Areas in millimetres: ultrasound regions, PixelSpacing, --pixel-spacing, the rules for
masks that span regions or lie in regions without a length calibration, track statistics."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pydicom
import pytest
from dicom_files import COLS, REGIONS, ROWS, US_IMAGE, make_dicom
from pydicom.data import get_testdata_file

from medsam_edge.errors import InputError
from medsam_edge.runtime import dicom_regions, measure, spacing


def _calibration(tmp_path, regions=REGIONS):
    path, _ = make_dicom(tmp_path / "units.dcm", frames=1, sop_class=US_IMAGE, regions=regions)
    return dicom_regions.pixel_calibration_from_dataset(pydicom.dcmread(path, stop_before_pixels=True), "units.dcm")


def _rect(y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((ROWS, COLS), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_areas_in_mm2_match_a_hand_computation_per_region(tmp_path):
    calibration = _calibration(tmp_path)
    masks = np.stack([_rect(10, 20, 10, 30),    # region 1: 200 px x 0.1 mm x 0.1 mm
                      _rect(10, 20, 100, 120),  # region 2: 200 px x 0.3 mm x 0.2 mm
                      np.zeros((ROWS, COLS), bool)])
    fields = measure.measurements(masks, calibration)
    assert fields["mask_area_mm2"] == [pytest.approx(2.0), pytest.approx(12.0), 0.0]
    assert fields["equivalent_diameter_mm"][0] == pytest.approx(2 * math.sqrt(2.0 / math.pi), abs=1e-4)
    assert fields["equivalent_diameter_mm"][1] == pytest.approx(2 * math.sqrt(12.0 / math.pi), abs=1e-4)


def test_a_mask_spanning_two_regions_gets_no_mm_and_one_message(tmp_path, caplog):
    calibration = _calibration(tmp_path)
    spanning = np.stack([_rect(10, 20, 70, 90)])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert measure.measurements(spanning, calibration) == {"mask_area_mm2": [None],
                                                                   "equivalent_diameter_mm": [None]}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "prompt 0: the mask spans ultrasound regions 1, 2" in lines[0]
    assert "pixels only" in lines[0]


def test_mixed_units_and_other_formats_are_reported_never_guessed(tmp_path, caplog):
    mixed = REGIONS[:2] + (dict(x=(0, 159), y=(60, 119), fmt=1, units=(3, 4), delta=(0.01, 0.01)),)
    calibration = _calibration(tmp_path, mixed)
    assert "ultrasound region 3 is calibrated in cm x seconds, not cm x cm" in calibration.problems
    with caplog.at_level(logging.WARNING):
        fields = measure.measurements(np.stack([_rect(70, 80, 10, 20)]), calibration)
    assert fields["mask_area_mm2"] == [None] and "which is calibrated in cm x seconds" in caplog.text
    m_mode = _calibration(tmp_path)  # REGIONS: region 3 is M-mode
    assert "ultrasound region 3 has spatial format 'M-mode', not '2D'" in m_mode.problems
    assert measure.measurements(np.stack([_rect(70, 80, 10, 20)]), m_mode)["mask_area_mm2"] == [None]


def test_pydicoms_ultrasound_regions_do_not_fit_their_resized_pictures(caplog):
    from medsam_edge.runtime.sources import open_source

    with open_source("pydicom:examples_ybr_color.dcm") as source, caplog.at_level(logging.WARNING):
        assert spacing.resolve_pixel_calibration(source) is None
    assert "region 1 (x 84-595, y 31-414) does not fit the 320x240 image" in caplog.text
    assert caplog.text.count("pixel spacing unknown") == 1


def test_pixel_spacing_from_the_header_and_from_the_option(tmp_path, caplog):
    from medsam_edge.runtime.sources import open_source

    with open_source(get_testdata_file("CT_small.dcm", download=False)) as ct:
        calibration = spacing.resolve_pixel_calibration(ct)
        assert calibration.source == "PixelSpacing"
        fields = measure.measurements(np.ones((1, 128, 128), bool), calibration)
        assert fields["mask_area_mm2"] == [pytest.approx(128 * 128 * 0.661468 ** 2, abs=1e-3)]
        with caplog.at_level(logging.WARNING):
            override = spacing.resolve_pixel_calibration(ct, spacing.parse_pixel_spacing("0.5"))
        assert override.uniform.row_mm == 0.5 and "overrides the file's own calibration" in caplog.text
    path, _ = make_dicom(tmp_path / "imager.dcm", frames=1, sop_class=US_IMAGE, regions=())
    ds = pydicom.dcmread(path)
    ds.ImagerPixelSpacing = [0.25, 0.5]
    assert dicom_regions.pixel_calibration_from_dataset(ds, "x").uniform == spacing.PixelSize(0.25, 0.5, "ImagerPixelSpacing")
    video = spacing.resolve_pixel_calibration(object(), spacing.parse_pixel_spacing("0.2,0.3"))
    assert measure.measurements(np.ones((1, 2, 5), bool), video)["mask_area_mm2"] == [pytest.approx(0.6)]


@pytest.mark.parametrize("text", ["0", "-1", "a", "1,2,3", "nan", "0.2,", "1e300", "inf", "0.2,1e-300"])
def test_bad_pixel_spacing_values_are_one_line_errors(text):
    with pytest.raises(InputError, match="--pixel-spacing") as info:
        spacing.parse_pixel_spacing(text)
    assert "\n" not in str(info.value)


def test_track_statistics_for_the_summary(tmp_path):
    calibration = _calibration(tmp_path)
    records = [{"mask_area": [200, 0], "mask_area_mm2": [2.0, 0.0], "equivalent_diameter_mm": [1.6, 0.0],
                "lost": [False, True]},
               {"mask_area": [400, 50], "mask_area_mm2": [4.0, None], "equivalent_diameter_mm": [2.3, None]}]
    summary = measure.track_statistics(records, calibration)
    first, second = summary["tracks"]
    assert first["mask_area_mm2"] == {"mean": 3.0, "min": 2.0, "p50": 3.0, "max": 4.0}
    assert first["mask_area_px"]["max"] == 400 and first["frames"] == 2 and first["empty_frames"] == 0
    assert second["empty_frames"] == 1 and second["lost_frames"] == 1 and second["unmeasured_frames"] == 1
    assert second["mask_area_mm2"] is None and summary["spacing"]["source"] == "ultrasound regions"
    pixels_only = measure.track_statistics([{"mask_area": [3]}])
    assert pixels_only["spacing"] == {"source": None, "unit": "pixel"}
    assert "mask_area_mm2" not in pixels_only["tracks"][0]


def test_a_pixel_spacing_past_the_range_stops_the_run_naming_the_value(capsys):
    """--pixel-spacing 1e300 would write Infinity into frames.jsonl: refused before any work."""
    from medsam_edge.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "no-model-dir", "no-source", "--box", "1,1,9,9", "--pixel-spacing", "1e300"])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--pixel-spacing '1e300'" in error and "between 1e-06 and 1000" in error


def test_header_pixel_sizes_past_the_range_are_reported_never_used(tmp_path):
    path, _ = make_dicom(tmp_path / "huge.dcm", frames=1, sop_class=US_IMAGE, regions=(),
                         pixel_spacing=("1e300", "1e300"))
    huge = dicom_regions.pixel_calibration_from_dataset(pydicom.dcmread(path, stop_before_pixels=True), "huge")
    assert not huge.known and huge.problems == ("PixelSpacing is not two pixel sizes of 1e-06 to 1000 mm",)
    wide = REGIONS[:1] + (dict(x=(80, 159), y=(0, 59), fmt=1, units=(3, 3), delta=(1e200, 0.01)),)
    calibration = _calibration(tmp_path, wide)
    assert calibration.known and calibration.regions[1].size is None
    assert "ultrasound region 2 has a pixel size of 1e+201 x 0.1 mm, outside 1e-06 to 1000 mm" in calibration.problems


@pytest.mark.parametrize("mm", spacing.PIXEL_MM_RANGE)
def test_measurements_at_either_end_of_the_range_are_finite_json(mm):
    calibration = spacing.PixelCalibration("x", uniform=spacing.PixelSize(mm, mm, "--pixel-spacing"))
    masks = np.zeros((2, 1000, 1000), bool)
    masks[0] = True
    masks[1, 0, 0] = True
    fields = measure.measurements(masks, calibration)
    json.dumps(fields, allow_nan=False)  # raises on Infinity or NaN
    assert fields["mask_area_mm2"] == [pytest.approx(1e6 * mm * mm, rel=1e-5), pytest.approx(mm * mm, rel=1e-5)]
    assert fields["mask_area_mm2"][1] > 0  # a micrometre pixel's area is not rounded away
    summary = measure.track_statistics([{"mask_area": [10 ** 6, 1], **fields}], calibration)
    json.dumps(summary, allow_nan=False)
