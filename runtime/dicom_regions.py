"""A DICOM header's pixel calibration: ultrasound regions, PixelSpacing, ImagerPixelSpacing.

1. A DICOM file with a Sequence of Ultrasound Regions (0018,6011) is measured by its regions
   only (its PixelSpacing, if any, is ignored: ultrasound machines put the calibration in the
   regions). A region gives millimetres when its spatial format is 2D (1) and both physical
   units are cm (3): PhysicalDeltaX/Y (cm per pixel) x 10. Regions with other units or formats
   (M-mode, spectral Doppler, waveforms: seconds, cm/s, dB, ...) and regions that do not fit
   inside the image (a header left unchanged when the picture was resized) give no length
   and are reported, never guessed.
2. PixelSpacing (0028,0030), at the root or in the shared Pixel Measures of an enhanced
   multi-frame object, else ImagerPixelSpacing (0018,1164) (at the detector: for projection
   X-ray that is the patient's size times the geometric magnification).
A pixel size outside spacing.PIXEL_MM_RANGE is reported as unusable, like any broken value.

The rule for a mask in an ultrasound file (spacing.PixelCalibration.size_for): it is
measured only when every one of its pixels lies inside ultrasound regions that are
calibrated in cm and agree on the pixel size. A mask that crosses a region's edge (spans
two regions), lies outside every region, or lies in a region without a length calibration
gets null for that frame, and the reason is logged once per prompt and reason.

No header value other than these numbers is read here, so nothing here can log patient data.
"""

from __future__ import annotations

import math

from .spacing import PIXEL_MM_RANGE, PixelCalibration, PixelSize, UltrasoundRegion, pixel_mm_ok

# PS3.3 C.8.5.5.1.1 (Region Spatial Format) and C.8.5.5.1.15 (Physical Units X/Y Direction).
SPATIAL_FORMATS = {0: "none", 1: "2D", 2: "M-mode", 3: "spectral", 4: "waveform", 5: "graphics"}
UNITS = {0: "none", 1: "percent", 2: "dB", 3: "cm", 4: "seconds", 5: "hertz", 6: "dB/seconds",
         7: "cm/sec", 8: "cm2", 9: "cm2/sec", 10: "cm3", 11: "cm3/sec", 12: "degrees"}
FORMAT_2D, UNITS_CM = 1, 3
_RANGE = f"{PIXEL_MM_RANGE[0]:g} to {PIXEL_MM_RANGE[1]:g} mm"


def finite_number(value: object) -> float | None:
    """A header value as a finite float, or None (missing, text, NaN, infinity)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _spacing_pair(value: object) -> tuple[float, float] | None:
    """A PixelSpacing-like value -> (row_mm, col_mm) if it is two pixel sizes in range."""
    try:
        pair = [finite_number(v) for v in value]  # type: ignore[union-attr]
    except TypeError:
        return None
    if len(pair) != 2 or not all(pixel_mm_ok(v) for v in pair):
        return None
    return pair[0], pair[1]


def _region(number: int, item, rows: int, columns: int) -> UltrasoundRegion:
    bounds = [finite_number(item.get(k)) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                              "RegionLocationMaxX1", "RegionLocationMaxY1")]
    if any(b is None for b in bounds):
        return UltrasoundRegion(number, 0, 0, -1, -1, None, "has no usable location")
    x0, y0, x1, y1 = (int(b) for b in bounds)
    region = UltrasoundRegion(number, x0, y0, x1, y1, None)

    def unusable(problem: str) -> UltrasoundRegion:
        return UltrasoundRegion(number, x0, y0, x1, y1, None, problem)

    # Vendors disagree on whether Max X1/Y1 is inclusive, so one pixel past the edge is let
    # through; more means the region was drawn on a picture of another size.
    if x0 < 0 or y0 < 0 or x1 < x0 or y1 < y0 or x1 > columns or y1 > rows:
        return unusable(f"({region.bounds}) does not fit the {columns}x{rows} image: its "
                        "calibration is for a picture of another size")
    fmt = int(finite_number(item.get("RegionSpatialFormat")) or 0)
    units = [int(finite_number(item.get(k)) or 0) for k in ("PhysicalUnitsXDirection", "PhysicalUnitsYDirection")]
    if fmt != FORMAT_2D:
        return unusable(f"has spatial format {SPATIAL_FORMATS.get(fmt, str(fmt))!r}, not '2D'")
    if units != [UNITS_CM, UNITS_CM]:
        names = " x ".join(UNITS.get(u, f"unit code {u}") for u in units)
        return unusable(f"is calibrated in {names}, not cm x cm")
    dx, dy = finite_number(item.get("PhysicalDeltaX")), finite_number(item.get("PhysicalDeltaY"))
    if not dx or not dy:
        return unusable("has no Physical Delta X/Y")
    # A negative delta is an axis that runs the other way; its size is the same.
    row_mm, col_mm = abs(dy) * 10.0, abs(dx) * 10.0
    if not (pixel_mm_ok(row_mm) and pixel_mm_ok(col_mm)):
        return unusable(f"has a pixel size of {col_mm:g} x {row_mm:g} mm, outside {_RANGE}")
    size = PixelSize(row_mm, col_mm, f"ultrasound region {number}")
    return UltrasoundRegion(number, x0, y0, min(x1, columns - 1), min(y1, rows - 1), size)


def pixel_calibration_from_dataset(ds, name: str) -> PixelCalibration:
    """A DICOM header -> its PixelCalibration (see the module docstring for the order)."""
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    items = ds.get("SequenceOfUltrasoundRegions")
    if items:
        regions = tuple(_region(i, item, rows, columns) for i, item in enumerate(items, 1))
        problems = tuple(f"ultrasound region {r.number} {r.problem}" for r in regions if r.problem)
        return PixelCalibration(name, regions=regions, problems=problems)
    candidates = [("PixelSpacing", ds.get("PixelSpacing")), ("ImagerPixelSpacing", ds.get("ImagerPixelSpacing"))]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        measures = shared[0].PixelMeasuresSequence
        if measures:
            candidates.insert(1, ("PixelSpacing", measures[0].get("PixelSpacing")))
    problems = []
    for keyword, value in candidates:
        if value is None:
            continue
        pair = _spacing_pair(value)
        if pair is None:
            problems.append(f"{keyword} is not two pixel sizes of {_RANGE}")
            continue
        return PixelCalibration(name, uniform=PixelSize(pair[0], pair[1], keyword))
    return PixelCalibration(name, problems=tuple(problems))
