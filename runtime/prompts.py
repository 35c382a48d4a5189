"""Prompts: a box, clicks, or both per object; parsed, validated, and chosen per frame.

Boxes are x0, y0, x1, y1 and points x, y in the frame's pixels. Validation happens
against the frame they are used on, because only then is the image size known. Where
prompts come from: the caller, a file (runtime.schedule), or the last mask
(runtime.tracker); the Prompter picks among them for each frame.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from medsam_edge.contract import CLICK_LABELS, POINTS_MAX
from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

# Prompts (objects) per frame at most: each costs a decoder pass and its masks' memory.
MAX_OBJECTS_PER_FRAME = 64


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
        """box: four numbers; points: [[x, y], ...]; labels: one 1/0 per point (default 1).
        Anything else is an InputError naming the value."""
        pts = _no_points() if points is None else _numbers(points, "points", "[[x, y], ...]", (-1, 2))
        lab = (np.ones(len(pts), np.int64) if labels is None
               else _numbers(labels, "labels", "one 1 or 0 per point", (-1,)))
        if labels is not None and not np.all(np.isfinite(lab)):
            raise InputError(f"labels {_show(labels)}: expected one 1 or 0 per point")
        lab = lab.astype(np.int64) if labels is not None else lab
        box = None if box is None else _numbers(box, "box", "four numbers x0, y0, x1, y1", (4,))
        return cls(None if box is None else box.astype(np.float32), pts.astype(np.float32), lab)

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


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(value, what: str, expected: str, shape: tuple[int, ...]) -> np.ndarray:
    """`value` as a float64 array of `shape` (-1: any length), or InputError naming it."""
    if isinstance(value, (str, bytes)):
        raise InputError(f"{what} {_show(value)}: expected {expected}")
    try:
        a = np.asarray(value, np.float64)
        if -1 not in shape and a.size != int(np.prod(shape)):
            raise ValueError
        return a.reshape(shape)
    except (TypeError, ValueError):
        raise InputError(f"{what} {_show(value)}: expected {expected}") from None


# Coordinates beyond this are no pixel of any picture; float32 (the decoder's) would make
# 1e308 an inf and the message would no longer show what was typed.
MAX_COORDINATE = 1e7


def _coordinates(values: list[float], what: str, text: str) -> None:
    for v in values:
        if not math.isfinite(v):
            raise InputError(f"{what} {text!r}: {v:g} is not a finite number")
        if abs(v) > MAX_COORDINATE:
            raise InputError(f"{what} {text!r}: {v:g} is not a pixel coordinate (at most ±{MAX_COORDINATE:g})")


def parse_point(text: str) -> tuple[list[float], int]:
    """'x,y' or 'x,y,label' (label 1 positive, 0 negative) -> ([x, y], label)."""
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"point {text!r}: expected x,y or x,y,label with numbers") from None
    if len(values) not in (2, 3):
        raise InputError(f"point {text!r}: expected x,y or x,y,label, got {len(values)} numbers")
    _coordinates(values[:2], "point", text)
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
    _coordinates(values, "box", text)
    return values


def validate_boxes(boxes, height: int, width: int, where: str = "box", warn: bool = True) -> np.ndarray:
    """Check boxes against an image; clip the parts outside it (logged unless `warn` is False).

    NaN/inf, inverted (x1 <= x0 or y1 <= y0), smaller than a pixel and wholly-outside
    boxes are errors: each would silently give a meaningless mask.
    """
    b = _numbers(boxes, where, "boxes [[x0, y0, x1, y1], ...]", (-1, 4)) if len(boxes) else np.zeros((0, 4))
    out = []
    for x0, y0, x1, y1 in b:
        desc = f"{where} [{x0:g},{y0:g},{x1:g},{y1:g}]"
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise InputError(f"{desc}: not a finite number")
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"{desc}: inverted or empty; give x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise InputError(f"{desc}: smaller than one pixel ({x1 - x0:g}x{y1 - y0:g}); give a box of at least "
                             "1x1 pixels around the object")
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if cx1 - cx0 < 1 or cy1 - cy0 < 1:
            raise InputError(f"{desc}: outside the {width}x{height} image")
        if warn and (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            log.warning("%s: clipped to the %dx%d image", desc, width, height)
        out.append((cx0, cy0, cx1, cy1))
    return np.asarray(out, np.float32).reshape(-1, 4)


def validate_prompts(prompts, height: int, width: int, where: str = "prompt", warn: bool = True) -> list[Prompt]:
    """Check prompts against an image: boxes as validate_boxes does, clicks finite, inside
    the image (a click outside it has no pixel to point at) and labelled 0 or 1."""
    prompts = list(prompts)
    if len(prompts) > MAX_OBJECTS_PER_FRAME:
        raise InputError(f"{where}: {len(prompts)} prompts on one frame; at most {MAX_OBJECTS_PER_FRAME} "
                         "(split the objects over several runs)")
    out = []
    for k, p in enumerate(prompts):
        if not isinstance(p, Prompt):
            raise InputError(f"{where} {k}: expected a Prompt, got {type(p).__name__}")
        desc = f"{where} {k}"
        box = None if p.box is None else validate_boxes([p.box], height, width, f"{desc} box", warn)[0]
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
    if isinstance(prompts_or_boxes, Prompt):
        return [prompts_or_boxes]
    if isinstance(prompts_or_boxes, (str, bytes)) or not hasattr(prompts_or_boxes, "__iter__"):
        raise InputError(f"prompts {_show(prompts_or_boxes)}: expected Prompt objects or boxes "
                         "[[x0, y0, x1, y1], ...]")
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


class Prompter:
    """The prompts for each frame: set by the caller, from a schedule, or carried by a tracker.

    `set_prompts()` may be called from another thread at any time: the new prompts take
    effect at the next frame whose prompts are asked for (a frame being decoded keeps
    the prompts it started with), and a running tracker restarts from them (none: the
    tracker stops). Prompts a schedule names for exactly this frame override propagation
    likewise. Every such change is a new version (a number counting up from 0, the
    prompts the session started with): `version` is the one the last prompts_for() used,
    so an answer can say which prompts it is for.
    """

    def __init__(self, schedule=None, tracker=None) -> None:
        """schedule: a runtime.schedule.PromptSchedule or None; tracker: a runtime.tracker.PromptTracker or None."""
        self.schedule = schedule
        self.tracker = tracker
        self._lock = threading.Lock()
        self._pending: tuple[list[Prompt], int] | None = None
        self._given: list[Prompt] | None = None  # the caller's prompts, once set
        self._versions = 0  # versions handed out so far
        self.version = 0  # the version of the prompts the last prompts_for() returned
        # The schedule's current entry, validated: a box clipped to the picture is said
        # once, when its entry first applies (or the frame size changes), not every frame.
        self._checked: tuple[tuple, list[Prompt]] | None = None

    def set_prompts(self, prompts) -> int:
        """Prompt objects or (N, 4) boxes; numbers checked now, the rest against the next frame.
        Returns the version the answers with these prompts will carry."""
        pending = as_prompts(prompts)
        for k, p in enumerate(pending):  # a NaN is wrong on any frame: said at the call, not a frame later
            values = np.concatenate([p.box if p.box is not None else np.zeros(0, np.float32), p.points.ravel()])
            if not np.isfinite(values).all():
                raise InputError(f"set_prompts: prompt {k} holds a number that is not finite ({_show(values.tolist())})")
        with self._lock:
            self._versions += 1
            self._pending = (pending, self._versions)
            return self._versions

    def current(self) -> list[Prompt] | None:
        """The prompts in use: a tracker's current ones, else the caller's; None before any."""
        tracked = self.tracker.current() if self.tracker is not None else None
        return tracked if tracked is not None else self._given

    def prompts_for(self, frame) -> list[Prompt]:
        where = f"{frame.source} frame {frame.index} prompt"
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._given = validate_prompts(pending[0], frame.height, frame.width, where)
            self.version = pending[1]
        if self._given is not None:
            given, restart = self._given, pending is not None
        elif self.schedule is not None:
            given = self._scheduled(frame, where)
            restart = self.schedule.starts_at(frame.index)
            if restart and frame.index > 0:
                with self._lock:
                    self._versions += 1
                    self.version = self._versions
        else:
            given, restart = [], False
        if self.tracker is None:
            return given
        if restart and not given:
            self.tracker.clear()  # no prompts: no track goes on with the old ones
        elif restart or self.tracker.current() is None:
            if given:
                self.tracker.reset(given)
        current = self.tracker.current()
        return validate_prompts(current, frame.height, frame.width, where) if current else []

    def _scheduled(self, frame, where: str) -> list[Prompt]:
        raw = self.schedule.prompts_for(frame.index)
        key = (tuple(id(p) for p in raw), frame.height, frame.width)
        if self._checked is None or self._checked[0] != key:
            self._checked = (key, validate_prompts(raw, frame.height, frame.width, where))
        return list(self._checked[1])

    def observe(self, masks: np.ndarray, scores: np.ndarray, image: np.ndarray | None = None) -> list[bool]:
        """Tell the tracker this frame's masks; returns which tracks are lost (all False without one)."""
        if self.tracker is None:
            return [False] * len(masks)
        return self.tracker.update(masks, scores, image)
