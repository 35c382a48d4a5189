"""Box prompts: from the command line, from a per-frame file, or propagated from the last mask.

Boxes are x0, y0, x1, y1 in the frame's pixels. Validation happens against the frame
they are used on, because only then is the image size known.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from bisect import bisect_right
from pathlib import Path

import numpy as np

from medsam_edge.errors import InputError

log = logging.getLogger(__name__)


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
