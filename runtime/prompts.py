"""Prompts: a box, clicks, or both per object; from the command line, from a per-frame
file, or propagated from the last mask.

Boxes are x0, y0, x1, y1 and points x, y in the frame's pixels. Validation happens
against the frame they are used on, because only then is the image size known.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam_edge.contract import CLICK_LABELS, POINTS_MAX
from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

# Prompts (objects) per frame at most: each costs a decoder pass and its masks' memory.
MAX_PROMPTS = 64


def _no_points() -> np.ndarray:
    return np.zeros((0, 2), np.float32)


def _no_labels() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(frozen=True)
class Prompt:
    """One object to segment, in frame pixels.

    box: (4,) float32 x0, y0, x1, y1, or None.
    points: (K, 2) float32 x, y clicks; labels: (K,) int64, 1 positive, 0 negative.
    The medical models (MedSAM, LiteMedSAM) were trained on boxes: for them a click
    refines a box, and clicks alone give poor or empty masks.
    """

    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=_no_points)
    labels: np.ndarray = field(default_factory=_no_labels)

    @classmethod
    def of(cls, box=None, points=None, labels=None) -> "Prompt":
        pts = _no_points() if points is None else np.asarray(points, np.float32).reshape(-1, 2)
        lab = (np.ones(len(pts), np.int64) if labels is None
               else np.asarray(labels, np.float64).reshape(-1).astype(np.int64))
        return cls(None if box is None else np.asarray(box, np.float32).reshape(4), pts, lab)

    @property
    def layout(self) -> tuple[int, bool]:
        """(clicks, has a box): prompts of one layout share a decoder call without padding."""
        return len(self.points), self.box is not None

    def with_points(self, points, labels) -> "Prompt":
        """This prompt with more clicks appended."""
        pts = np.concatenate([self.points, np.asarray(points, np.float32).reshape(-1, 2)])
        lab = np.concatenate([self.labels, np.asarray(labels, np.int64).reshape(-1)])
        return Prompt(self.box, pts, lab)

    def to_json(self) -> dict:
        out: dict = {}
        if self.box is not None:
            out["box"] = [round(float(v), 2) for v in self.box]
        if len(self.points):
            out["points"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.points]
            out["labels"] = [int(v) for v in self.labels]
        return out


def parse_point(text: str) -> tuple[list[float], int]:
    """'x,y' or 'x,y,label' (label 1 positive, 0 negative) -> ([x, y], label)."""
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"point {text!r}: expected x,y or x,y,label with numbers") from None
    if len(values) not in (2, 3):
        raise InputError(f"point {text!r}: expected x,y or x,y,label, got {len(values)} numbers")
    label = 1 if len(values) == 2 else values[2]
    if label not in CLICK_LABELS:
        raise InputError(f"point {text!r}: label {label:g} is not 1 (positive) or 0 (negative)")
    return values[:2], int(label)


def parse_box(text: str) -> list[float]:
    """'x0,y0,x1,y1' -> four floats; anything else is a one-line error."""
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"box {text!r}: expected four numbers x0,y0,x1,y1") from None
    if len(values) != 4:
        raise InputError(f"box {text!r}: expected four numbers x0,y0,x1,y1, got {len(values)}")
    return values


def validate_boxes(boxes, height: int, width: int, where: str = "box") -> np.ndarray:
    """Check boxes against an image; clip the parts outside it.

    NaN/inf, inverted (x1 <= x0 or y1 <= y0) and wholly-outside boxes are errors: each
    would silently give a meaningless mask.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    out = []
    for x0, y0, x1, y1 in b:
        desc = f"{where} [{x0:g},{y0:g},{x1:g},{y1:g}]"
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise InputError(f"{desc}: not a finite number")
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"{desc}: inverted or empty; give x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if cx1 - cx0 < 1 or cy1 - cy0 < 1:
            raise InputError(f"{desc}: outside the {width}x{height} image")
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            log.warning("%s: clipped to the %dx%d image", desc, width, height)
        out.append((cx0, cy0, cx1, cy1))
    return np.asarray(out, np.float32).reshape(-1, 4)


def validate_prompts(prompts, height: int, width: int, where: str = "prompt") -> list[Prompt]:
    """Check prompts against an image: boxes as validate_boxes does, clicks finite, inside
    the image (a click outside it has no pixel to point at) and labelled 0 or 1."""
    prompts = list(prompts)
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{where}: {len(prompts)} prompts on one frame; at most {MAX_PROMPTS} "
                         "(split the objects over several runs)")
    out = []
    for k, p in enumerate(prompts):
        if not isinstance(p, Prompt):
            raise InputError(f"{where} {k}: expected a Prompt, got {type(p).__name__}")
        desc = f"{where} {k}"
        box = None if p.box is None else validate_boxes([p.box], height, width, f"{desc} box")[0]
        if box is None and not len(p.points):
            raise InputError(f"{desc}: neither a box nor a point")
        room = POINTS_MAX - (2 if box is not None else 1)
        if len(p.points) > room:
            raise InputError(f"{desc}: {len(p.points)} points; at most {room} "
                             f"{'beside a box' if box is not None else 'without a box'}")
        if len(p.labels) != len(p.points):
            raise InputError(f"{desc}: {len(p.points)} points but {len(p.labels)} labels")
        for (x, y), lab in zip(p.points, p.labels):
            if not (math.isfinite(x) and math.isfinite(y)):
                raise InputError(f"{desc} point [{x:g},{y:g}]: not a finite number")
            if not (0 <= x < width and 0 <= y < height):
                raise InputError(f"{desc} point [{x:g},{y:g}]: outside the {width}x{height} image")
            if int(lab) not in CLICK_LABELS:
                raise InputError(f"{desc} point [{x:g},{y:g}]: label {lab} is not 1 (positive) or 0 (negative)")
        out.append(Prompt(box, p.points, p.labels))
    return out


def as_prompts(prompts_or_boxes) -> list[Prompt]:
    """A list of Prompts as is; (N, 4) boxes (array or nested lists) as box-only prompts."""
    if prompts_or_boxes is None:
        return []
    items = list(prompts_or_boxes) if not isinstance(prompts_or_boxes, np.ndarray) else None
    if items is not None and all(isinstance(p, Prompt) for p in items):
        return items
    try:
        boxes = np.asarray(prompts_or_boxes, np.float64)
    except (TypeError, ValueError):
        raise InputError("prompts: expected Prompt objects or boxes [[x0, y0, x1, y1], ...]") from None
    if boxes.size == 0:
        return []
    if boxes.ndim not in (1, 2) or boxes.shape[-1] != 4:
        raise InputError(f"boxes of shape {boxes.shape}: expected [[x0, y0, x1, y1], ...]")
    return [Prompt.of(b) for b in boxes.reshape(-1, 4)]


class BoxSchedule:
    """Per-frame boxes; a frame's boxes hold until the next frame that names its own.

    File formats:
    - JSON: {"0": [[x0,y0,x1,y1], ...], "12": [...]} or [{"frame": 0, "boxes": [[...]]}, ...]
    - CSV: a header with frame,x0,y0,x1,y1; one row per box.
    """

    def __init__(self, by_frame: dict[int, np.ndarray]) -> None:
        self.frames = sorted(by_frame)
        self.by_frame = by_frame

    @classmethod
    def constant(cls, boxes) -> "BoxSchedule":
        return cls({0: np.asarray(boxes, np.float32).reshape(-1, 4)})

    @classmethod
    def from_file(cls, path: str | Path) -> "BoxSchedule":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: boxes file not found")
        try:
            text = path.read_text()
            entries = _read_csv(text) if path.suffix.lower() == ".csv" else _read_json(text)
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a boxes file ({e}); see `medsam-edge run --help` for the format") from None
        if not entries:
            raise InputError(f"{path}: no boxes in the file")
        by_frame: dict[int, list] = {}
        for frame, box in entries:
            if frame < 0:
                raise InputError(f"{path}: frame index {frame} is negative")
            by_frame.setdefault(frame, []).append(box)
        return cls({k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in by_frame.items()})

    def boxes_for(self, index: int) -> np.ndarray:
        i = bisect_right(self.frames, index) - 1
        return self.by_frame[self.frames[i]] if i >= 0 else np.zeros((0, 4), np.float32)

    def starts_at(self, index: int) -> bool:
        """True where the file names boxes for exactly this frame (it overrides propagation)."""
        return index in self.by_frame


def _read_json(text: str) -> list[tuple[int, list[float]]]:
    data = json.loads(text)
    items = data.items() if isinstance(data, dict) else ((d["frame"], d["boxes"]) for d in data)
    out = []
    for frame, boxes in items:
        boxes = boxes if boxes and isinstance(boxes[0], (list, tuple)) else [boxes]
        out.extend((int(frame), [float(v) for v in b]) for b in boxes)
    return out


def _read_csv(text: str) -> list[tuple[int, list[float]]]:
    rows = csv.DictReader(text.splitlines())
    return [(int(r["frame"]), [float(r[k]) for k in ("x0", "y0", "x1", "y1")]) for r in rows]


class BoxTracker:
    """Propagates each box from its last mask: the mask's bounding box grown by a margin.

    This is how LiteMedSAM's 3D inference carries a box from slice to slice. A track
    whose mask vanishes (fewer than `min_area` pixels) or whose score falls below
    `min_score` is reported lost and keeps its last good box, so it can be re-acquired
    if the object comes back; it is never silently replaced by a wrong box.
    """

    def __init__(self, margin: float = 0.15, min_pixels: int = 5, min_area: int = 16, min_score: float = 0.3) -> None:
        self.margin = margin
        self.min_pixels = min_pixels
        self.min_area = min_area
        self.min_score = min_score
        self.boxes: np.ndarray | None = None

    def reset(self, boxes: np.ndarray) -> None:
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()

    def current(self) -> np.ndarray | None:
        return self.boxes

    def update(self, masks: np.ndarray, scores: np.ndarray) -> list[bool]:
        """Move each box to its mask; returns which tracks are lost on this frame."""
        if self.boxes is None:
            return []
        lost = []
        h, w = masks.shape[1:] if masks.ndim == 3 else (0, 0)
        for i, (mask, score) in enumerate(zip(masks, scores)):
            ys, xs = np.nonzero(mask)
            if len(xs) < self.min_area or float(score) < self.min_score:
                lost.append(True)
                continue
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            # Grow by a fraction of the box size, at least a few pixels, so motion stays inside.
            mx = max(self.min_pixels, self.margin * (x1 - x0))
            my = max(self.min_pixels, self.margin * (y1 - y0))
            self.boxes[i] = (max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my))
            lost.append(False)
        return lost


class Prompter:
    """Boxes for each frame: the schedule's, or the tracker's once a track is running."""

    def __init__(self, schedule: BoxSchedule | None, tracker: BoxTracker | None) -> None:
        self.schedule = schedule
        self.tracker = tracker

    def boxes_for(self, frame) -> np.ndarray:
        where = f"{frame.source} frame {frame.index} box"
        if self.tracker is not None:
            if self.tracker.current() is None or (self.schedule and self.schedule.starts_at(frame.index)):
                given = self.schedule.boxes_for(frame.index) if self.schedule else np.zeros((0, 4))
                if len(given):
                    self.tracker.reset(validate_boxes(given, frame.height, frame.width, where))
            current = self.tracker.current()
            return current if current is not None else np.zeros((0, 4), np.float32)
        given = self.schedule.boxes_for(frame.index) if self.schedule else np.zeros((0, 4))
        return validate_boxes(given, frame.height, frame.width, where)

    def observe(self, masks: np.ndarray, scores: np.ndarray) -> list[bool]:
        if self.tracker is None:
            return [False] * len(masks)
        return self.tracker.update(masks, scores)
