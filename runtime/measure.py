"""Measuring: mask areas and diameters in mm, a step of the pipeline before any output.

`Measured(stream, pixel_calibration)` gives each result its `measurements` as it leaves the
stream, so the sinks and the summary only write what was measured. `TrackStatistics` sums
the measured results up per prompt for summary.json.

Every number here is finite: pixel sizes are bounded (spacing.PIXEL_MM_RANGE), and a value
that is not finite all the same is written as null, never as Infinity or NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .spacing import PixelCalibration

# Decimals kept: 4, or more for small values down to 6 significant digits (4 decimals
# alone would write 0 for the area of micrometre pixels).
DECIMALS, SIGNIFICANT = 4, 6


def _finite(value: float) -> float | None:
    """`value` rounded for JSON, None if it is not finite."""
    if not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return round(value, max(DECIMALS, SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))))


def measurements(masks: np.ndarray, pixel_calibration: PixelCalibration | None) -> dict:
    """Per-prompt mm fields for a frame record, or {} when the spacing is unknown.

    masks: (N, H, W) bool. Returns {"mask_area_mm2": [N floats or None],
    "equivalent_diameter_mm": [...]} (the diameter of the circle of the same area); None
    where this frame's mask cannot be measured (the reason is logged once per prompt).
    """
    if pixel_calibration is None or not pixel_calibration.known:
        return {}
    areas: list[float | None] = []
    diameters: list[float | None] = []
    for k, mask in enumerate(np.asarray(masks, bool)):
        count = int(mask.sum())
        size, why = (None, None) if count == 0 else pixel_calibration.size_for(mask)
        if count and size is None:
            pixel_calibration.say_once((k, why), f"prompt {k}: the mask {why}; its area is in pixels only there")
            areas.append(None)
            diameters.append(None)
            continue
        area = 0.0 if size is None else count * size.row_mm * size.col_mm
        areas.append(_finite(area))
        diameters.append(_finite(2.0 * math.sqrt(area / math.pi)) if math.isfinite(area) else None)
    return {"mask_area_mm2": areas, "equivalent_diameter_mm": diameters}


class Measured:
    """The measuring step over a stream: each result leaves with its `measurements` set.

    Everything else (close, stats, source, ended_early, ...) is the wrapped stream's, so
    the output stage treats it as the stream itself.
    """

    def __init__(self, stream, pixel_calibration: PixelCalibration | None) -> None:
        self.stream = stream
        self.pixel_calibration = pixel_calibration

    def __iter__(self) -> Iterator:
        for result in self.stream:
            result.measurements = measurements(result.masks, self.pixel_calibration)
            yield result

    def __getattr__(self, name: str):
        # Only reached for names not set in __init__: the stream's own attributes.
        return getattr(self.stream, name)


def _stats(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, np.float64)
    return {"mean": _finite(float(a.mean())), "min": _finite(float(a.min())),
            "p50": _finite(float(np.median(a))), "max": _finite(float(a.max()))}


class TrackStatistics:
    """Per-prompt (per-track) area statistics over a run, from its frame records.

    add(record): a record with "mask_area" (pixels per prompt) and, when the spacing is
    known, "mask_area_mm2" and "equivalent_diameter_mm"; "lost" optional. add_result: the
    same from a measured FrameResult. Statistics are over the frames where the prompt's
    mask is non-empty; empty, lost and unmeasured frames are counted.
    """

    def __init__(self) -> None:
        self._tracks: dict[int, dict] = {}

    def add_result(self, result) -> None:
        """A FrameResult after the measuring step (without building its whole record)."""
        self.add({"mask_area": [int(m.sum()) for m in result.masks], "lost": result.lost, **result.measurements})

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

    def summary(self, pixel_calibration: PixelCalibration | None = None) -> dict:
        """{"spacing": ..., "tracks": [...]} for summary.json."""
        known = pixel_calibration is not None and pixel_calibration.known
        tracks = []
        for k in sorted(self._tracks):
            t = self._tracks[k]
            entry = {"prompt": k, "frames": t["frames"], "empty_frames": t["empty"], "lost_frames": t["lost"],
                     "mask_area_px": _stats(t["px"])}
            if known:
                entry.update(mask_area_mm2=_stats(t["mm2"]), equivalent_diameter_mm=_stats(t["mm"]),
                             unmeasured_frames=t["unmeasured"])
            tracks.append(entry)
        spacing = pixel_calibration.describe() if known else {"source": None, "unit": "pixel"}
        return {"spacing": spacing, "tracks": tracks}


def track_statistics(records: Iterable[dict], pixel_calibration: PixelCalibration | None = None) -> dict:
    """TrackStatistics over `records` in one call."""
    stats = TrackStatistics()
    for record in records:
        stats.add(record)
    return stats.summary(pixel_calibration)
