"""Motion between the frame an embedding came from and the frame being answered.

A reused embedding (a near repeat, or real-time mode's newest one) shows the anatomy
where it was on the embedding's frame. Instead of drawing the mask there, each prompt is
mapped into the embedding's frame, decoded, and its low-res logits are warped back to
the frame being answered:

    small = SmallFrame.of(image)                   # grey, longest side FLOW_SIZE
    motion = MotionEstimator().estimate(emb_small, small, prompts)
    if motion.applied:
        logits = decode(enc, motion.map_prompts(prompts))
        logits = motion.warp_logits(logits, enc.original_hw, enc.resized_hw, pre)

The motion is OpenCV's DIS optical flow between the two frames at low resolution (about
2 ms on one core at 160 px, where a LiteMedSAM decoder call takes 50-100 ms); inside each
prompt's region (its box grown by a margin) a rotation-scale-translation is fitted to
the flow with RANSAC. One transform per prompt, not the dense field: ultrasound speckle
makes single flow vectors noisy, and a mask warped by a smooth transform keeps its shape.

A transform is refused (Motion.applied False, Motion.why says why) when the flow does not
explain the change: too few vectors agree (a cut, a region without texture), the scale
or rotation is implausible, warping does not reduce the difference, or the region would
come from outside the picture. Callers then fall back: a fresh embedding (deterministic
mode) or no compensation (real-time mode). Logits are never warped in from outside the
picture: those pixels are background.

Coordinates: frame pixels as boxes use them (x from 0 at the left edge to W at the right
edge); a transform maps a point of the frame being answered to the embedding's frame.
It is fitted in frame pixels and applied in three grids (to_grid):

    frame px --x 1/factor--> small-frame px        flow, region differences (SmallFrame)
    frame px --x resized/original--> model px --x 256/size--> logits px   (warp_logits)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from medsam_edge.contract import LOW_RES_HW, Preprocess
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.small_frame import SmallFrame

REGION_CELLS = 32  # a region's difference is judged on at most this many cells a side
MARGIN = 0.25  # a prompt's region: its box grown by this share of its size on each side...
MIN_MARGIN = 0.04  # ...and by at least this share of the frame's shorter side
STILL = 0.25 / 255  # a region this close to the embedding's frame has not moved: no flow needed
MIN_INLIERS = 0.5  # share of a region's flow vectors the fitted transform must explain
MAX_SCALE = 1.3  # most zoom between the two frames (and 1 / MAX_SCALE)
MAX_ROTATION = 20.0  # degrees
MIN_INSIDE = 0.9  # share of a region that must map inside the embedding's picture
MIN_TEXTURE = 2.0  # grey-level spread a region needs for its flow to mean anything
MAX_GAIN = 1.1  # brightness changes up to this factor are exposure (auto-exposure, a gain knob)
# The shorter side DIS flow is asked about, in small-frame pixels. OpenCV 4.11's DIS (FAST preset)
# refuses pictures under 12 px both ways and crashes the process (SIGSEGV) on wide, short
# ones: 8-14 px high from 40 px wide, 16-30 px high from 80 px wide; none at 32 px and more
# up to the 160 px small frame (docs/decisions.md, "Smallest picture motion follows").
MIN_FLOW_SIDE = 32
NEGLIGIBLE = 0.3  # small-frame pixels: a motion moving no corner of a region farther is none
_OUTSIDE = -40.0  # logits given to what comes from outside the picture: surely background


def identity() -> np.ndarray:
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


_IDENTITY = identity()


def prompt_region(p: Prompt, hw: tuple[int, int], margin: float = MARGIN) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 in frame pixels: where a prompt's object can be, its box (or its
    clicks' extent) grown by `margin` of its size and at least MIN_MARGIN of the frame."""
    h, w = hw
    if p.box is not None:
        x0, y0, x1, y1 = (float(v) for v in p.box)
        if len(p.points):
            x0, y0 = min(x0, float(p.points[:, 0].min())), min(y0, float(p.points[:, 1].min()))
            x1, y1 = max(x1, float(p.points[:, 0].max())), max(y1, float(p.points[:, 1].max()))
    else:
        x0, y0 = (float(v) for v in p.points.min(axis=0))
        x1, y1 = (float(v) for v in p.points.max(axis=0))
    least = MIN_MARGIN * min(h, w) + (0 if p.box is not None else 0.1 * min(h, w))
    mx, my = max(margin * (x1 - x0), least), max(margin * (y1 - y0), least)
    return max(0.0, x0 - mx), max(0.0, y0 - my), min(float(w), x1 + mx), min(float(h), y1 + my)


def to_grid(a: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A transform in frame pixels -> the same transform in the index coordinates of a grid
    with (sx, sy) grid pixels per frame pixel (pixel centres at i + 0.5), for cv2.warpAffine."""
    s = np.diag([sx, sy])
    lin = s @ a[:, :2] @ np.diag([1.0 / sx, 1.0 / sy])
    t = s @ a[:, 2] + lin @ np.array([0.5, 0.5]) - 0.5
    return np.hstack([lin, t[:, None]])


def apply(a: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(K, 2) points -> (K, 2) points under the 2x3 transform a."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return xy @ a[:, :2].T + a[:, 2]


@dataclass
class PromptMotion:
    """One prompt's motion. matrix: 2x3, a point of this frame -> the embedding's frame.
    residual / residual_before: mean absolute grey difference over the prompt's region
    (0..1) with and without the transform; with a gain change up to MAX_GAIN levelled where
    the transform was judged against no motion, plain where nothing moved enough to judge."""

    matrix: np.ndarray
    residual: float
    residual_before: float
    inliers: float = 1.0

    @property
    def scale(self) -> float:
        (a, b), (c, d) = self.matrix[0, :2], self.matrix[1, :2]
        return float(math.sqrt(abs(a * d - b * c)))  # np.linalg.det: BLAS dispatch, contended by the encoder

    @property
    def rotation(self) -> float:
        return float(math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0])))

    def shift(self, region) -> tuple[float, float]:
        """How far the region's centre moved from the embedding's frame to this one (pixels)."""
        c = np.array([(region[0] + region[2]) / 2, (region[1] + region[3]) / 2])
        d = c - apply(self.matrix, c)[0]
        return float(d[0]), float(d[1])


@dataclass
class Motion:
    """The motion of every prompt of a frame, or why there is none to apply.

    applied: True when every prompt has a plausible transform (then map_prompts and
    warp_logits use them); False with `why` otherwise. beyond: (not applied) the flow
    found motion that cannot be followed (off the picture, implausible zoom or rotation),
    as opposed to finding no motion to follow (incoherent flow, no texture, warping that
    does not help). still: nothing moved enough to warp (identity transforms). ms: what
    estimating it cost.
    """

    prompts: list[PromptMotion]
    regions: list[tuple[float, float, float, float]]
    applied: bool
    why: str = ""
    still: bool = False
    ms: float = 0.0
    beyond: bool = False

    @property
    def moved(self) -> bool:
        """Applied and not the identity: decoding needs mapping and warping."""
        return self.applied and not self.still

    def select(self, indices: list[int]) -> "Motion":
        """The motion of some of the prompts (a refinement pass over a subset)."""
        if not self.applied:
            return self
        return Motion([self.prompts[i] for i in indices], [self.regions[i] for i in indices], True, self.why,
                      self.still, 0.0)

    def map_prompts(self, prompts: list[Prompt], hw: tuple[int, int]) -> list[Prompt]:
        """This frame's prompts -> the embedding's frame (boxes stay axis-aligned: the box of
        the mapped corners), clipped to the picture."""
        h, w = hw
        out = []
        for p, m in zip(prompts, self.prompts):
            box = None
            if p.box is not None:
                x0, y0, x1, y1 = p.box
                c = apply(m.matrix, [[x0, y0], [x1, y0], [x0, y1], [x1, y1]])
                box = np.array([max(0.0, c[:, 0].min()), max(0.0, c[:, 1].min()),
                                min(float(w), c[:, 0].max()), min(float(h), c[:, 1].max())], np.float32)
            pts = apply(m.matrix, p.points) if len(p.points) else p.points
            pts = np.clip(pts, 0, [w - 1e-3, h - 1e-3]).astype(np.float32)
            out.append(Prompt(box, pts, p.labels))
        return out

    def warp_logits(self, logits: np.ndarray, original_hw: tuple[int, int], resized_hw: tuple[int, int],
                    pre: Preprocess) -> np.ndarray:
        """(N, 1, 256, 256) logits decoded on the embedding's frame -> this frame's.

        The logits cover the model's input square; the picture is its top-left
        resized_hw part. What would come from outside it is background."""
        h, w = original_hw
        rh, rw = resized_hw
        k = LOW_RES_HW / pre.size
        sx, sy = rw * k / w, rh * k / h
        ph, pw = min(LOW_RES_HW, round(rh * k)), min(LOW_RES_HW, round(rw * k))
        out = np.empty_like(logits)
        for i, (lg, m) in enumerate(zip(logits[:, 0], self.prompts)):
            src = np.full((LOW_RES_HW, LOW_RES_HW), _OUTSIDE, np.float32)
            src[:ph, :pw] = lg[:ph, :pw]
            warped = cv2.warpAffine(src, to_grid(m.matrix, sx, sy), (LOW_RES_HW, LOW_RES_HW),
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=_OUTSIDE)
            warped[ph:, :] = lg[ph:, :]  # the padding keeps what the decoder gave it
            warped[:ph, pw:] = lg[:ph, pw:]
            out[i, 0] = warped
        return out

    def record(self) -> dict:
        """For the frame's JSON record: what was applied per prompt, or why nothing was."""
        if not self.applied:
            return {"applied": False, "why": self.why, "beyond": self.beyond, "ms": round(self.ms, 3)}
        return {"applied": True, "still": self.still, "ms": round(self.ms, 3),
                "shift_px": [[round(v, 2) for v in m.shift(r)] for m, r in zip(self.prompts, self.regions)],
                "scale": [round(m.scale, 4) for m in self.prompts],
                "rotation_deg": [round(m.rotation, 2) for m in self.prompts],
                "residual": [round(m.residual, 5) for m in self.prompts]}


class MotionEstimator:
    """Estimates, per prompt, how the picture moved between two frames of one size.

    preset: a cv2.DISOPTICAL_FLOW_PRESET_*; margin: see prompt_region. One estimator per
    thread (DIS keeps state).
    """

    def __init__(self, margin: float = MARGIN, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST) -> None:
        self.margin = margin
        self._dis = cv2.DISOpticalFlow_create(preset)

    def estimate(self, emb: SmallFrame, cur: SmallFrame, prompts: list[Prompt], before: list[float] | None = None,
                 keep_small: bool = False, min_inliers: float = MIN_INLIERS) -> Motion:
        """emb: the embedding's frame; cur: the frame being answered (same original size).
        before: each prompt region's difference without motion, where already known.
        keep_small: a motion under NEGLIGIBLE is kept as fitted, not taken for the identity,
        where motions are composed (runtime.follow), as small ones add up.
        min_inliers: the share of the flow the transform must explain."""
        t0 = time.perf_counter()
        motion = self._estimate(emb, cur, prompts, before, keep_small, min_inliers)
        motion.ms = (time.perf_counter() - t0) * 1e3
        return motion

    def _estimate(self, emb: SmallFrame, cur: SmallFrame, prompts: list[Prompt], before, keep_small: bool,
                  min_inliers: float) -> Motion:
        hw = cur.original_hw
        regions = [prompt_region(p, hw, self.margin) for p in prompts]
        if emb.original_hw != hw or emb.grey.shape != cur.grey.shape:
            return Motion([], regions, False, "the frames differ in size", beyond=True)
        if before is None:
            before = [region_difference(emb, cur, r, identity()) for r in regions]
        if all(b is not None and b <= STILL for b in before):
            return Motion([PromptMotion(_IDENTITY, b, b) for b in before], regions, True, still=True)
        if min(cur.grey.shape) < MIN_FLOW_SIDE:
            return Motion([], regions, False, f"the picture is under {MIN_FLOW_SIDE} px a side at flow resolution",
                          beyond=True)
        flow = self._dis.calc(cur.grey, emb.grey, None)
        fitted = []
        for r, b in zip(regions, before):
            m, why, beyond = self._fit(flow, emb, cur, r, b, keep_small, min_inliers)
            if m is None:
                return Motion([], regions, False, why, beyond=beyond)
            fitted.append(m)
        return Motion(fitted, regions, True, still=all(m.matrix is _IDENTITY for m in fitted))

    def _fit(self, flow: np.ndarray, emb: SmallFrame, cur: SmallFrame, region, before: float | None,
             keep_small: bool = False, min_inliers: float = MIN_INLIERS):
        """-> (PromptMotion or None, why not, whether the motion is beyond following)."""
        if before is None:
            return None, "the region is outside the picture", True
        sx, sy = cur.scale
        c0, r0, c1, r1 = _cells(region, sx, sy, cur.grey.shape)
        patch = cur.grey[r0:r1, c0:c1]
        if patch.size < 16 or float(patch.std()) < MIN_TEXTURE:
            return None, "no texture to follow in the region", False
        step = max(1, int(math.sqrt(patch.size / 400)))  # about 400 vectors a region
        ys, xs = np.mgrid[r0:r1:step, c0:c1:step]
        xs, ys = xs.ravel(), ys.ravel()
        f = flow[ys, xs]
        src = np.stack([(xs + 0.5) / sx, (ys + 0.5) / sy], axis=1)
        dst = np.stack([(xs + 0.5 + f[:, 0]) / sx, (ys + 0.5 + f[:, 1]) / sy], axis=1)
        a, inliers = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.RANSAC,
                                                 ransacReprojThreshold=1.0 / sx, maxIters=500, refineIters=10)
        if a is None:
            return None, "the flow fits no motion", False
        share = float(inliers.mean())
        m = PromptMotion(a.astype(np.float64), before, before, share)
        if share < min_inliers:
            return None, f"the flow is incoherent ({share:.0%} of it agrees)", False
        if not 1 / MAX_SCALE <= m.scale <= MAX_SCALE or abs(m.rotation) > MAX_ROTATION:
            return None, f"implausible motion (scale {m.scale:.2f}, rotation {m.rotation:.0f} deg)", True
        if _inside(m.matrix, region, emb.original_hw) < MIN_INSIDE:
            return None, "the region would come from outside the picture", True
        if _largest_move(m.matrix, region) * min(sx, sy) < NEGLIGIBLE:
            # Less than the flow can resolve: warping would only blur, and noise decides
            # whether it lowers the difference. Kept as fitted where motions are composed.
            return PromptMotion(m.matrix if keep_small else _IDENTITY, before, before, share), "", False
        # Judged with a small gain change levelled on both sides: an endoscope's auto-exposure
        # flicker (a few percent) outweighs a sub-pixel motion's share of the difference,
        # and noise then decided whether the right motion "explained" anything.
        after = region_difference(emb, cur, region, m.matrix, levelled=True)
        unmoved = region_difference(emb, cur, region, _IDENTITY, levelled=True)
        if after is None or after > unmoved:
            return None, "the motion does not explain the change", False
        m.residual, m.residual_before = after, unmoved
        return m, "", False


def _cells(region, sx: float, sy: float, shape) -> tuple[int, int, int, int]:
    """A region in frame pixels -> (c0, r0, c1, r1) small-frame pixels, rounded outwards."""
    h, w = shape
    x0, y0, x1, y1 = region
    return (max(0, int(x0 * sx)), max(0, int(y0 * sy)), min(w, math.ceil(x1 * sx)), min(h, math.ceil(y1 * sy)))


def _largest_move(a: np.ndarray, region) -> float:
    """How far (frame pixels) the transform moves the farthest corner of the region."""
    x0, y0, x1, y1 = region
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float64)
    return float(np.hypot(*(apply(a, corners) - corners).T).max())


def _inside(a: np.ndarray, region, hw: tuple[int, int]) -> float:
    """Share of the region that the transform maps inside the picture (its mapped
    bounding box against the picture: exact for the near-translations that pass)."""
    x0, y0, x1, y1 = region
    c = apply(a, [[x0, y0], [x1, y0], [x0, y1], [x1, y1]])
    bx0, by0, bx1, by1 = c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()
    h, w = hw
    inter = max(0.0, min(bx1, w) - max(bx0, 0.0)) * max(0.0, min(by1, h) - max(by0, 0.0))
    return float(inter / max(1e-9, (bx1 - bx0) * (by1 - by0)))


def region_cells(emb: SmallFrame, cur: SmallFrame, region, matrix: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`region` of this frame and the embedding's frame seen through `matrix`, on at most
    REGION_CELLS cells a side (small regions at the small frame's resolution): (this
    frame's cells, the embedding frame's, where the latter has a counterpart inside its
    picture), float32, float32, bool. None when no cell has one."""
    sx, sy = cur.scale
    c0, r0, c1, r1 = _cells(region, sx, sy, cur.grey.shape)
    if c1 <= c0 or r1 <= r0:
        return None
    size = (c1 - c0, r1 - r0)
    a = cur.grey[r0:r1, c0:c1].astype(np.float32)
    m = to_grid(matrix, sx, sy)
    m[:, 2] += m[:, :2] @ np.array([c0, r0], np.float64)  # the crop's own origin
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    b = cv2.warpAffine(emb.grey, m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    inside = np.ones(emb.grey.shape, np.uint8)
    valid = (cv2.warpAffine(inside, m, size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0).astype(np.float32)
    cells = (min(REGION_CELLS, size[0]), min(REGION_CELLS, size[1]))
    if cells != size:
        a = cv2.resize(a, cells, interpolation=cv2.INTER_AREA)
        b = cv2.resize(np.where(valid > 0, b, 0), cells, interpolation=cv2.INTER_AREA)
        valid = cv2.resize(valid, cells, interpolation=cv2.INTER_AREA)
    ok = valid > 0.99
    if not ok.any():
        return None
    b[ok] /= valid[ok]
    return a, b, ok


def level(a: np.ndarray, b: np.ndarray) -> float:
    """The gain (1 / MAX_GAIN .. MAX_GAIN) that brings `b`'s mean to `a`'s: a larger change of
    brightness is a change of the picture, not exposure."""
    mean_b = float(b.mean())
    return min(MAX_GAIN, max(1 / MAX_GAIN, float(a.mean()) / mean_b)) if mean_b > 1.0 else 1.0


def region_difference(emb: SmallFrame, cur: SmallFrame, region, matrix: np.ndarray,
                      levelled: bool = False) -> float | None:
    """Mean absolute grey difference (0..1) over `region` of this frame between this frame
    and the embedding's frame seen through `matrix` (region_cells), with a gain change of up
    to MAX_GAIN levelled where `levelled`. None when no cell of the region has a counterpart
    inside the embedding's picture."""
    cells = region_cells(emb, cur, region, matrix)
    if cells is None:
        return None
    a, b, ok = cells
    a, b = a[ok], b[ok]
    gain = level(a, b) if levelled else 1.0
    return float(np.abs(a - gain * b).mean()) / 255.0
