"""Millimetres per pixel, and mask areas and diameters in mm.

Where the calibration comes from, in order:
1. `--pixel-spacing MM[,MM]` (any source; for a DICOM file it overrides the header, and says so).
2. A DICOM file with a Sequence of Ultrasound Regions (0018,6011) is measured by its regions
   only (its PixelSpacing, if any, is ignored: ultrasound machines put the calibration in the
   regions). A region gives millimetres when its spatial format is 2D (1) and both physical
   units are cm (3): PhysicalDeltaX/Y (cm per pixel) x 10. Regions with other units or formats
   (M-mode, spectral Doppler, waveforms: seconds, cm/s, dB, ...) and regions that do not fit
   inside the image (a header left unchanged when the picture was resized) give no length
   and are reported, never guessed.
3. PixelSpacing (0028,0030), at the root or in the shared Pixel Measures of an enhanced
   multi-frame object, else ImagerPixelSpacing (0018,1164) (at the detector: for projection
   X-ray that is the patient's size times the geometric magnification).

The rule for a mask in an ultrasound file: it is measured only when every one of its pixels
lies inside ultrasound regions that are calibrated in cm and agree on the pixel size. A mask
that crosses a region's edge (spans two regions), lies outside every region, or lies in a
region without a length calibration gets null for that frame, and the reason is logged once
per prompt and reason. An unknown spacing is said once; then only pixel areas are written.

No header value other than these numbers is read here, so nothing here can log patient data.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

# PS3.3 C.8.5.5.1.1 (Region Spatial Format) and C.8.5.5.1.15 (Physical Units X/Y Direction).
SPATIAL_FORMATS = {0: "none", 1: "2D", 2: "M-mode", 3: "spectral", 4: "waveform", 5: "graphics"}
UNITS = {0: "none", 1: "percent", 2: "dB", 3: "cm", 4: "seconds", 5: "hertz", 6: "dB/seconds",
         7: "cm/sec", 8: "cm2", 9: "cm2/sec", 10: "cm3", 11: "cm3/sec", 12: "degrees"}
FORMAT_2D, UNITS_CM = 1, 3
# Two regions agree on a pixel size within this relative difference (the header's floats
# are written by different code paths of one machine).
AGREE = 1e-6

PIXEL_SPACING_HELP = (
    "pixel size in mm for area and diameter in mm: MM for square pixels, or ROW_MM,COL_MM "
    "(DICOM order: the distance between rows, then between columns). For video and image "
    "sources; a DICOM file's own calibration (ultrasound regions, PixelSpacing) is used without "
    "it, and overridden with it. Without any, only pixel areas are written"
)


@dataclass(frozen=True)
class PixelSize:
    """Millimetres per pixel: row_mm between rows (vertical), col_mm between columns."""

    row_mm: float
    col_mm: float
    source: str

    def agrees(self, other: PixelSize) -> bool:
        return (math.isclose(self.row_mm, other.row_mm, rel_tol=AGREE)
                and math.isclose(self.col_mm, other.col_mm, rel_tol=AGREE))


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions; bounds are inclusive pixel indices."""

    number: int  # 1-based position in the sequence, as messages name it
    x0: int
    y0: int
    x1: int
    y1: int
    size: PixelSize | None  # None: this region gives no length
    problem: str | None = None  # why `size` is None

    def contains(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        return self.x0 <= x0 and self.y0 <= y0 and x1 <= self.x1 and y1 <= self.y1

    def touches(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        return x0 <= self.x1 and self.x0 <= x1 and y0 <= self.y1 and self.y0 <= y1

    @property
    def bounds(self) -> str:
        return f"x {self.x0}-{self.x1}, y {self.y0}-{self.y1}"


@dataclass
class PixelCalibration:
    """How one source's pixels map to millimetres: one size everywhere, or per region.

    uniform: the pixel size of the whole image (PixelSpacing, --pixel-spacing), or None.
    regions: ultrasound regions (used only when `uniform` is None).
    problems: what made parts of the header unusable, for the "unknown" message.
    """

    name: str
    uniform: PixelSize | None = None
    regions: tuple[UltrasoundRegion, ...] = ()
    problems: tuple[str, ...] = ()
    _said: set = field(default_factory=set, repr=False)

    @property
    def known(self) -> bool:
        """True if at least some masks can be measured in mm."""
        return self.uniform is not None or any(r.size is not None for r in self.regions)

    @property
    def source(self) -> str | None:
        if self.uniform is not None:
            return self.uniform.source
        return "ultrasound regions" if self.known else None

    def size_for(self, mask: np.ndarray) -> tuple[PixelSize | None, str | None]:
        """The pixel size that measures `mask` (H, W) bool, or None and the reason why not."""
        if self.uniform is not None:
            return self.uniform, None
        box = bounding_box(mask)
        if box is None:
            return None, None  # empty: 0 mm2 whatever the calibration
        inside = [r for r in self.regions if r.contains(box)]
        if not inside:
            touched = [str(r.number) for r in self.regions if r.touches(box)]
            if len(touched) > 1:
                return None, f"spans ultrasound regions {', '.join(touched)}"
            if touched:
                return None, f"crosses the edge of ultrasound region {touched[0]}"
            return None, "lies outside every ultrasound region"
        unusable = [r for r in inside if r.size is None]
        if unusable:
            return None, f"lies in ultrasound region {unusable[0].number}, which {unusable[0].problem}"
        first = inside[0].size
        if any(not first.agrees(r.size) for r in inside[1:]):
            numbers = ", ".join(str(r.number) for r in inside)
            return None, f"lies in overlapping ultrasound regions {numbers} with different pixel sizes"
        return first, None

    def say_once(self, key: object, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("%s: %s", self.name, message)

    def describe(self) -> dict:
        """For summary.json: where the calibration came from (no header values but sizes)."""
        out: dict = {"source": self.source, "unit": "mm"}
        if self.uniform is not None:
            out["pixel_mm"] = [self.uniform.row_mm, self.uniform.col_mm]
        elif self.regions:
            out["regions"] = [{"region": r.number, "bounds": [r.x0, r.y0, r.x1, r.y1],
                               "pixel_mm": None if r.size is None else [r.size.row_mm, r.size.col_mm],
                               **({"problem": r.problem} if r.problem else {})} for r in self.regions]
        if self.problems:
            out["problems"] = list(self.problems)
        return out


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive of the True pixels of an (H, W) mask, None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _spacing_pair(value: object) -> tuple[float, float] | None:
    """A PixelSpacing-like value -> (row_mm, col_mm) if it is two positive numbers."""
    try:
        pair = [_number(v) for v in value]  # type: ignore[union-attr]
    except TypeError:
        return None
    if len(pair) != 2 or any(v is None or v <= 0 for v in pair):
        return None
    return pair[0], pair[1]


def _region(number: int, item, rows: int, columns: int) -> UltrasoundRegion:
    bounds = [_number(item.get(k)) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
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
    fmt = int(_number(item.get("RegionSpatialFormat")) or 0)
    units = [int(_number(item.get(k)) or 0) for k in ("PhysicalUnitsXDirection", "PhysicalUnitsYDirection")]
    if fmt != FORMAT_2D:
        return unusable(f"has spatial format {SPATIAL_FORMATS.get(fmt, str(fmt))!r}, not '2D'")
    if units != [UNITS_CM, UNITS_CM]:
        names = " x ".join(UNITS.get(u, f"unit code {u}") for u in units)
        return unusable(f"is calibrated in {names}, not cm x cm")
    dx, dy = _number(item.get("PhysicalDeltaX")), _number(item.get("PhysicalDeltaY"))
    if not dx or not dy:
        return unusable("has no Physical Delta X/Y")
    # A negative delta is an axis that runs the other way; its size is the same.
    size = PixelSize(abs(dy) * 10.0, abs(dx) * 10.0, f"ultrasound region {number}")
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
            problems.append(f"{keyword} is not two positive numbers")
            continue
        return PixelCalibration(name, uniform=PixelSize(pair[0], pair[1], keyword))
    return PixelCalibration(name, problems=tuple(problems))


def parse_pixel_spacing(text: str) -> PixelSize:
    """`--pixel-spacing` value: "MM" or "ROW_MM,COL_MM" -> PixelSize; InputError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    values = [_number(p) for p in parts]
    if len(parts) not in (1, 2) or any(v is None or v <= 0 for v in values):
        raise InputError(f"--pixel-spacing {text!r}: expected MM or ROW_MM,COL_MM, positive numbers "
                         "of millimetres per pixel (e.g. 0.2 or 0.2,0.25)")
    row, col = (values[0], values[0]) if len(values) == 1 else values
    return PixelSize(row, col, "--pixel-spacing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--pixel-spacing` to the run command's parser (value: a PixelSize or None)."""
    parser.add_argument("--pixel-spacing", type=_argparse_spacing, metavar="MM[,MM]", help=PIXEL_SPACING_HELP)


def _argparse_spacing(text: str) -> PixelSize:
    try:
        return parse_pixel_spacing(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_pixel_calibration(source, pixel_spacing: PixelSize | None = None) -> PixelCalibration | None:
    """The calibration to measure `source`'s masks with, or None (said once, in the log).

    source: any Source; a DICOM source brings its header's calibration as
    `source.geometry.pixel_calibration`. pixel_spacing: from `--pixel-spacing`, wins if given.
    """
    name = getattr(source, "description", str(source))
    geometry = getattr(source, "geometry", None)
    own: PixelCalibration | None = getattr(geometry, "pixel_calibration", None)
    if pixel_spacing is not None:
        if own is not None and own.known:
            log.warning("%s: --pixel-spacing %g,%g mm overrides the file's own calibration (%s)",
                        name, pixel_spacing.row_mm, pixel_spacing.col_mm, own.source)
        else:
            log.info("%s: pixel size %g,%g mm from --pixel-spacing", name, pixel_spacing.row_mm,
                     pixel_spacing.col_mm)
        return PixelCalibration(name, uniform=pixel_spacing)
    if own is not None and own.known:
        for problem in own.problems:
            log.warning("%s: %s; masks there get no mm values", name, problem)
        log.info("%s: millimetres from %s", name, own.source)
        return own
    why = "; ".join(own.problems) if own is not None and own.problems else "the source gives no pixel size"
    hint = "" if geometry is not None else "; give --pixel-spacing MM for mm"
    log.warning("%s: pixel spacing unknown (%s): areas are in pixels only%s", name, why, hint)
    return None


def measurements(masks: np.ndarray, calibration: PixelCalibration | None) -> dict:
    """Per-prompt mm fields for a frame record, or {} when the spacing is unknown.

    masks: (N, H, W) bool. Returns {"mask_area_mm2": [N floats or None],
    "equivalent_diameter_mm": [...]} (the diameter of the circle of the same area); None
    where this frame's mask cannot be measured (the reason is logged once per prompt).
    """
    if calibration is None or not calibration.known:
        return {}
    areas: list[float | None] = []
    diameters: list[float | None] = []
    for k, mask in enumerate(np.asarray(masks, bool)):
        count = int(mask.sum())
        size, why = (None, None) if count == 0 else calibration.size_for(mask)
        if count and size is None:
            calibration.say_once((k, why), f"prompt {k}: the mask {why}; its area is in pixels only there")
            areas.append(None)
            diameters.append(None)
            continue
        area = 0.0 if size is None else count * size.row_mm * size.col_mm
        areas.append(round(area, 4))
        diameters.append(round(2.0 * math.sqrt(area / math.pi), 4))
    return {"mask_area_mm2": areas, "equivalent_diameter_mm": diameters}


def _stats(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, np.float64)
    return {"mean": round(float(a.mean()), 4), "min": round(float(a.min()), 4),
            "p50": round(float(np.median(a)), 4), "max": round(float(a.max()), 4)}


class TrackStatistics:
    """Per-prompt (per-track) area statistics over a run, from its frame records.

    add(record): a record with "mask_area" (pixels per prompt) and, when the spacing is
    known, "mask_area_mm2" and "equivalent_diameter_mm"; "lost" optional. Statistics are
    over the frames where the prompt's mask is non-empty; empty, lost and unmeasured
    frames are counted.
    """

    def __init__(self) -> None:
        self._tracks: dict[int, dict] = {}

    def add(self, record: dict) -> None:
        lost = list(record.get("lost") or [])
        mm2 = record.get("mask_area_mm2")
        diameter = record.get("equivalent_diameter_mm")
        for k, pixels in enumerate(record.get("mask_area") or []):
            t = self._tracks.setdefault(k, {"frames": 0, "empty": 0, "lost": 0, "unmeasured": 0,
                                            "px": [], "mm2": [], "mm": []})
            t["frames"] += 1
            t["lost"] += bool(k < len(lost) and lost[k])
            if not pixels:
                t["empty"] += 1
                continue
            t["px"].append(float(pixels))
            if mm2 is not None:
                if k < len(mm2) and mm2[k] is not None:
                    t["mm2"].append(float(mm2[k]))
                    t["mm"].append(float(diameter[k]))
                else:
                    t["unmeasured"] += 1

    def summary(self, calibration: PixelCalibration | None = None) -> dict:
        """{"spacing": ..., "tracks": [...]} for summary.json."""
        tracks = []
        for k in sorted(self._tracks):
            t = self._tracks[k]
            entry = {"prompt": k, "frames": t["frames"], "empty_frames": t["empty"], "lost_frames": t["lost"],
                     "mask_area_px": _stats(t["px"])}
            if calibration is not None and calibration.known:
                entry.update(mask_area_mm2=_stats(t["mm2"]), equivalent_diameter_mm=_stats(t["mm"]),
                             unmeasured_frames=t["unmeasured"])
            tracks.append(entry)
        spacing = calibration.describe() if calibration is not None and calibration.known else {
            "source": None, "unit": "pixel"}
        return {"spacing": spacing, "tracks": tracks}


def track_statistics(records: Iterable[dict], calibration: PixelCalibration | None = None) -> dict:
    """TrackStatistics over `records` in one call."""
    stats = TrackStatistics()
    for record in records:
        stats.add(record)
    return stats.summary(calibration)
