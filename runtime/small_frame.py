"""A frame as motion estimation and change detection see it: grey, shrunk, and where its picture is.

Coordinates: a SmallFrame pixel covers `factor` x `factor` frame pixels from the top-left;
runtime.motion maps frame pixels to these (SmallFrame.scale) and on to the decoder's
256x256 logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

FLOW_SIZE = 160  # longest side of the pictures the flow and change detection look at


@dataclass
class SmallFrame:
    """A frame as motion estimation and change detection see it.

    grey: (h, w) uint8, the frame's grey levels shrunk by a whole factor (`factor`) so its
        longest side is at most FLOW_SIZE; it covers the frame's top-left
        (h * factor, w * factor) pixels (at most factor - 1 columns and rows are left out).
    original_hw: the frame's own size.
    """

    grey: np.ndarray
    original_hw: tuple[int, int]
    factor: int = 1
    _area: np.ndarray | None = field(default=None, repr=False)
    _smooth: np.ndarray | None = field(default=None, repr=False)
    _spread: np.ndarray | None = field(default=None, repr=False)
    _thumb: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, image: np.ndarray, size: int = FLOW_SIZE) -> "SmallFrame":
        """image: HxWx3 uint8 RGB (or HxW grey)."""
        h, w = image.shape[:2]
        k = max(1, math.ceil(max(h, w) / size))
        # Grey first, then averaging whole k x k blocks: OpenCV's fast path, a fifth of the
        # time of shrinking by a fractional factor (0.4 ms for an 854x480 frame).
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if k > 1:
            grey = cv2.resize(grey[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
        return cls(np.ascontiguousarray(grey), (h, w), k)

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): small-frame pixels per frame pixel."""
        return 1.0 / self.factor, 1.0 / self.factor

    @property
    def thumb(self) -> np.ndarray:
        """(32, 32) float32: the whole small frame, for ranking frames by how alike they look."""
        if self._thumb is None:
            self._thumb = cv2.resize(self.grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        return self._thumb

    def area(self) -> np.ndarray:
        """(h, w) bool: the image area (see image_area), computed once."""
        if self._area is None:
            self._area = image_area(self.grey)
        return self._area

    def spread(self, area: np.ndarray | None = None, levelled: bool = False) -> np.ndarray:
        """(16,) float: how the grey levels (lightly smoothed against speckle) are spread
        over `area` (default this small frame's own image area, computed once). levelled:
        the grey levels scaled first so their mean over the area is mid-grey, so that a
        change of gain (an endoscope's auto-exposure) does not move them."""
        if self._smooth is None:
            self._smooth = cv2.blur(self.grey, (3, 3))
        if area is None and self._spread is not None and not levelled:
            return self._spread
        mask = (self.area() if area is None else area).astype(np.uint8)
        grey = self._smooth
        if levelled:
            mean = float(cv2.mean(grey, mask)[0])
            grey = np.clip(grey.astype(np.float32) * (128.0 / max(mean, 1.0)), 0, 255)
        h = cv2.calcHist([grey], [0], mask, [16], [0, 256])
        h = h.ravel() / max(1.0, float(h.sum()))
        if area is None and not levelled:
            self._spread = h
        return h


def image_area(grey: np.ndarray) -> np.ndarray:
    """(h, w) bool: where the picture is, as opposed to the screen around it.

    An ultrasound screen shows the fan (or an endoscope its circle) on black, with text,
    clocks, frame counters and ECG traces around it; those change without the anatomy
    changing. The image area is the convex hull of the largest non-black connected
    region once bands thinner than about 8% of the frame (text, traces, rulers) are opened away: fans and
    scope circles are convex, and their dark insides (chambers, cysts) belong to them.
    Where nothing stands out (a picture filling the frame), the whole frame.
    """
    h, w = grey.shape
    lit = (cv2.blur(grey, (5, 5)) > 6).astype(np.uint8)
    k = max(3, round(min(h, w) / 12) | 1)
    opened = cv2.morphologyEx(lit, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n < 2:
        return np.ones((h, w), bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[biggest, cv2.CC_STAT_AREA] < 0.1 * h * w:
        return np.ones((h, w), bool)
    # The hull of the region's outline is the hull of all its pixels, from far fewer points.
    outline, _ = cv2.findContours((labels == biggest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(outline))
    filled = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(filled, hull, 1)
    return filled.astype(bool)
