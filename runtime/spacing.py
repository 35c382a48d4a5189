"""Pixel calibration: how a source's pixels map to millimetres, and which calibration wins.

Not the INT8 calibration of `medsam_edge.calibration`: this is pixel spacing only.

Where a source's pixel calibration comes from, in order:
1. `--pixel-spacing MM[,MM]` (any source; for a DICOM file it overrides the header, and says so).
2. The DICOM header (runtime.dicom_regions): its Sequence of Ultrasound Regions, else
   PixelSpacing, else ImagerPixelSpacing.
An unknown spacing is said once; then only pixel areas are written.

Every pixel size, given or read, lies in PIXEL_MM_RANGE, so that every area and diameter
measured with it is a finite number (runtime.measure).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

# Two regions agree on a pixel size within this relative difference (the header's floats
# are written by different code paths of one machine).
AGREE = 1e-6
# Millimetres per pixel a calibration may say: a nanometre (electron microscopy) to a metre.
# Outside it a value is a typo or a broken header; inside it no mask's area can overflow.
PIXEL_MM_RANGE = (1e-6, 1e3)


def pixel_mm_ok(value: float | None) -> bool:
    """True for a finite pixel size in PIXEL_MM_RANGE (mm)."""
    return value is not None and math.isfinite(value) and PIXEL_MM_RANGE[0] <= value <= PIXEL_MM_RANGE[1]


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


def parse_pixel_spacing(text: str) -> PixelSize:
    """`--pixel-spacing` value: "MM" or "ROW_MM,COL_MM" -> PixelSize; InputError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            values.append(None)
    low, high = PIXEL_MM_RANGE
    if len(parts) not in (1, 2) or not all(pixel_mm_ok(v) for v in values):
        raise InputError(f"--pixel-spacing {text!r}: expected MM or ROW_MM,COL_MM, millimetres per pixel "
                         f"between {low:g} and {high:g} (e.g. 0.2 or 0.2,0.25)")
    row, col = (values[0], values[0]) if len(values) == 1 else values
    return PixelSize(row, col, "--pixel-spacing")


def resolve_pixel_calibration(source, pixel_spacing: PixelSize | None = None) -> PixelCalibration | None:
    """The pixel calibration to measure `source`'s masks with, or None (said once, in the log).

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
