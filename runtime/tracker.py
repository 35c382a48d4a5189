"""Prompts carried from frame to frame: each track's next box is its last mask's bounding box
grown by a margin, as LiteMedSAM's 3D inference carries a box from slice to slice.

A track is reported lost, and keeps its last good box so it can be re-acquired, when its
mask stops looking like the object it started as:
- the mask vanishes (fewer than `min_area` pixels) or the decoder's score collapses;
- its area jumps (more than `area_jump` times larger or smaller than the last good
  frame's) or drifts far from the first frame's (`area_drift`);
- its appearance changes: the grey-level histogram inside the mask moves away from the
  first frame's (Bhattacharyya distance above `max_appearance`): a track that slid off
  a bright lesion onto dark background keeps a plausible score but not its look;
- it is pinned to the picture's border while shrinking: the object is leaving the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from medsam_edge.runtime.prompts import Prompt

_BINS = 16


def centroid_click(mask: np.ndarray) -> tuple[float, float] | None:
    """The mask's centroid, or, where that falls outside a non-convex mask, the mask pixel
    nearest to it; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    cx, cy = float(xs.mean()), float(ys.mean())
    if mask[int(cy), int(cx)]:
        return cx, cy
    k = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
    return float(xs[k]), float(ys[k])


def _histogram(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    h = cv2.calcHist([grey], [0], mask.astype(np.uint8), [_BINS], [0, 256])
    return cv2.normalize(h, None, alpha=1.0, norm_type=cv2.NORM_L1)


@dataclass
class _Track:
    prompt: Prompt  # the prompt to use on the next frame
    first_area: int = 0
    last_area: int = 0
    appearance: np.ndarray | None = None
    lost: bool = False
    size: tuple[float, float] | None = None  # (w, h) of the box the track started from
    centre: tuple[float, float] | None = None  # of the last good mask's bounding box
    why: str | None = None  # why it is lost on the last frame


class PromptTracker:
    """Propagates each prompt from its last mask; says, per frame, which tracks are lost.

    margin: the box grows by this share of its size on each side, at least `min_margin`
        pixels, so the object's motion stays inside it.
    max_growth: the box is never wider or taller than this times the starting box: a box
        regrown with a margin from a mask that fills it would grow every frame (the defaults'
        sweep: docs/decisions.md#tracker-box-growth).
    leaving: a mask touching the border below this share of the first mask's area is
        leaving the picture.
    predict: move the box by the mask's last motion (constant velocity, at most half its size).
    centroid: also give the decoder the mask's centroid as a positive click (the box's
        clicks are replaced: the user's clicks were for the first frame only).
    """

    def __init__(self, margin: float = 0.1, min_margin: int = 3, min_area: int = 16, min_score: float = 0.3,
                 area_jump: float = 2.5, area_drift: float = 4.0, max_appearance: float = 0.5,
                 centroid: bool = False, max_growth: float | None = 1.3, leaving: float = 0.5,
                 predict: bool = True) -> None:
        self.predict = predict
        self.margin = margin
        self.min_margin = min_margin
        self.max_growth = max_growth
        self.leaving = leaving
        self.min_area = min_area
        self.min_score = min_score
        self.area_jump = area_jump
        self.area_drift = area_drift
        self.max_appearance = max_appearance
        self.centroid = centroid
        self.tracks: list[_Track] | None = None

    def reset(self, prompts: list[Prompt]) -> None:
        self.tracks = [_Track(p, size=None if p.box is None else (float(p.box[2] - p.box[0]), float(p.box[3] - p.box[1])))
                       for p in prompts]

    def clear(self) -> None:
        """No tracks: current() is None until reset()."""
        self.tracks = None

    def current(self) -> list[Prompt] | None:
        return None if self.tracks is None else [t.prompt for t in self.tracks]

    def update(self, masks: np.ndarray, scores: np.ndarray, image: np.ndarray | None = None) -> list[bool]:
        """Move each track to its mask on this frame; returns which tracks are lost here."""
        if self.tracks is None:
            return []
        grey = None if image is None else (image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        lost = []
        for track, mask, score in zip(self.tracks, masks, scores):
            why = self._why_lost(track, mask, float(score), grey)
            track.why = why
            track.lost = why is not None
            lost.append(track.lost)
            if not track.lost:
                self._follow(track, mask, grey)
        return lost

    def _why_lost(self, t: _Track, mask: np.ndarray, score: float, grey) -> str | None:
        area = int(mask.sum())
        if area < self.min_area:
            return "mask vanished"
        if score < self.min_score:
            return "score collapsed"
        if t.last_area:
            if not 1 / self.area_jump <= area / t.last_area <= self.area_jump:
                return "area jumped"
            if not 1 / self.area_drift <= area / t.first_area <= self.area_drift:
                return "area drifted"
            if self._pinned(mask) and area < self.leaving * t.first_area:
                return "leaving the picture"
        if grey is not None and t.appearance is not None:
            d = cv2.compareHist(t.appearance, _histogram(grey, mask), cv2.HISTCMP_BHATTACHARYYA)
            if d > self.max_appearance:
                return "appearance changed"
        return None

    @staticmethod
    def _pinned(mask: np.ndarray) -> bool:
        return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())

    def _follow(self, t: _Track, mask: np.ndarray, grey) -> None:
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        mx = max(self.min_margin, self.margin * (x1 - x0))
        my = max(self.min_margin, self.margin * (y1 - y0))
        bx0, by0, bx1, by1 = x0 - mx, y0 - my, x1 + mx, y1 + my
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        if self.predict and t.centre is not None:
            # Constant velocity: the box goes where the object is heading, by at most half its size.
            vx = float(np.clip(centre[0] - t.centre[0], -(x1 - x0) / 2, (x1 - x0) / 2))
            vy = float(np.clip(centre[1] - t.centre[1], -(y1 - y0) / 2, (y1 - y0) / 2))
            bx0, bx1, by0, by1 = bx0 + vx, bx1 + vx, by0 + vy, by1 + vy
        t.centre = centre
        if self.max_growth and t.size:
            # Never wider or taller than the starting box allows, about the mask's centre.
            cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
            hw = min(bx1 - bx0, t.size[0] * self.max_growth) / 2
            hh = min(by1 - by0, t.size[1] * self.max_growth) / 2
            bx0, bx1, by0, by1 = cx - hw, cx + hw, cy - hh, cy + hh
        box = (max(0, bx0), max(0, by0), min(w, bx1), min(h, by1))
        click = centroid_click(mask) if self.centroid else None
        t.prompt = Prompt.of(box, [click] if click else None, [1] if click else None)
        area = int(mask.sum())
        if not t.first_area:
            t.first_area = area
            if grey is not None:
                t.appearance = _histogram(grey, mask)
        t.last_area = area
