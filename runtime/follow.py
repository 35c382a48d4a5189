"""Following the anatomy through real-time mode: consecutive-frame motions, composed.

Motion estimated directly between an embedding's frame and a frame a second later fails
exactly when it matters (the flow between them no longer agrees); between consecutive
frames the motion is small and the flow follows it. So every answered frame is one link
of a chain: per prompt, the transform from that frame to the chain's first frame, the
product of the consecutive ones (runtime.motion.MotionEstimator between neighbours). The
transform between any two frames of the chain is then one product, at no flow cost.

The chain breaks where the motion cannot be followed (a cut or a probe lift: the picture
changed; a blank frame between; a motion the flow finds but no transform follows; flow
that explains nothing where the picture did change): frames before the break are out of
reach from frames after it, and the frame's answer waits for an embedding it can reach.

Transforms are 3x3 (homogeneous) here, 2x3 where runtime.motion takes them; each maps a
point of the later frame to the earlier one, as runtime.motion's do.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from medsam_edge.runtime.change import region_change
from medsam_edge.runtime.motion import Motion, MotionEstimator, PromptMotion, prompt_region
from medsam_edge.runtime.motion import identity, to_grid
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.small_frame import SmallFrame

# Links kept: 10 s at 30 fps, longer than an encode takes, so every embedding that lands
# finds its frame in the chain; beyond it, a direct estimate is tried.
HISTORY = 300
# Where the flow finds no motion that explains the change between consecutive frames (no
# texture; lung sliding under a still pleura; speckle), a region that changed by at most
# this beyond gain and noise (runtime.change, 0..1) has not moved: the link is the identity.
# Beyond it (B-lines flashing, something come into view) the chain breaks
# (docs/decisions.md#links-where-two-motions-meet).
LINK_CHANGE = 0.012
# Between neighbouring frames a beating heart's walls and valves move apart from the
# chamber: 46-49 % of the flow agrees with one transform where a single estimate wants
# half; the chain follows the rest (docs/decisions.md#real-time-that-follows).
LINK_MIN_INLIERS = 0.4


def homogeneous(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64)[:2], [0.0, 0.0, 1.0]])


EYE = np.eye(3)


def invert(m: np.ndarray) -> np.ndarray:
    """The inverse of a 3x3 affine transform, in closed form: np.linalg.inv took 0.1 ms a
    call idle and far more beside a busy encoder (BLAS threads contend), on every frame."""
    (a, b, tx), (c, d, ty) = m[0], m[1]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return np.array([[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)], [0.0, 0.0, 1.0]])


@dataclass
class Link:
    """One answered frame: its small frame, its prompts' regions, and per region the transform
    from this frame to the chain's first frame (None: not known, a prompt that appeared
    where no region of the frame before was)."""

    index: int
    small: SmallFrame | None
    regions: list[tuple[float, float, float, float]]
    to_origin: list[np.ndarray | None]


def _nearest(regions, region) -> int | None:
    if not regions:
        return None
    cx, cy = (region[0] + region[2]) / 2, (region[1] + region[3]) / 2
    return int(np.argmin([((r[0] + r[2]) / 2 - cx) ** 2 + ((r[1] + r[3]) / 2 - cy) ** 2 for r in regions]))


def _slot(link: Link, k: int, region, count: int) -> int | None:
    """The region of `link` that stands for prompt k of `count` (at `region`): the same
    index where the prompt count is unchanged, else the nearest."""
    return k if len(link.regions) == count else _nearest(link.regions, region)


class MotionChain:
    """The links of the answered frames since the last break, newest last (one thread)."""

    def __init__(self, estimator: MotionEstimator | None = None, scene_threshold: float = 0.15) -> None:
        self.estimator = estimator or MotionEstimator()
        self.scene_threshold = scene_threshold
        self.links: deque[Link] = deque(maxlen=HISTORY)
        self._by_index: dict[int, Link] = {}
        self._blank_since = False

    def blank(self) -> None:
        """A blank frame (probe lifted) came: what follows is not followed from before it."""
        self._blank_since = True

    def step(self, index: int, small: SmallFrame, prompts: list[Prompt]) -> str | None:
        """Add the frame; returns why the chain broke here (None: followed from the last link)."""
        regions = [prompt_region(p, small.original_hw, self.estimator.margin) for p in prompts]
        why = None
        prev = self.links[-1] if self.links else None
        moves: list[np.ndarray | None] = []
        if prev is not None:
            why, moves = self._follow(prev, small, prompts, regions)
        if prev is None or why is not None:
            self.links.clear()
            self._by_index.clear()
            link = Link(index, small, regions, [EYE] * len(regions))
        else:
            to_origin = []
            for k, (r, m) in enumerate(zip(regions, moves)):
                s = _slot(prev, k, r, len(regions))
                base = None if s is None else prev.to_origin[s]
                to_origin.append(None if base is None else base @ m)
            link = Link(index, small, regions, to_origin)
        if len(self.links) == self.links.maxlen:
            self._by_index.pop(self.links[0].index, None)
        self.links.append(link)
        self._by_index[index] = link
        if len(self.links) > 1:
            self.links[-2].small = None  # only the newest link's picture is compared with the next
        self._blank_since = False
        return why

    def _follow(self, prev: Link, small: SmallFrame, prompts, regions) -> tuple[str | None, list]:
        from medsam_edge.runtime.reuse import scene_difference

        if self._blank_since:
            return "a blank frame came between (probe lifted)", []
        if prev.small.original_hw != small.original_hw:
            return "the frame size changed", []
        scene = scene_difference(prev.small, small, levelled=True)
        if scene > self.scene_threshold:
            return f"the picture changed (scene difference {scene:.2f}: a cut or a probe lift)", []
        if not prompts:
            return None, []
        motion = self.estimator.estimate(prev.small, small, prompts, keep_small=True, min_inliers=LINK_MIN_INLIERS)
        if motion.applied:
            return None, [homogeneous(m.matrix) for m in motion.prompts]
        if motion.beyond:
            return f"motion not followed: {motion.why}", []
        # The flow found nothing to follow, or nothing that explains the change: fine where
        # nothing changed beyond gain and noise, a break where it did.
        changes = [region_change(prev.small, small, r, identity()) for r in regions]
        if all(c is not None and c <= LINK_CHANGE for c in changes):
            return None, [EYE] * len(regions)
        worst = max((c for c in changes if c is not None), default=None)
        said = "" if worst is None else f"; changed {worst:.3f} beyond gain and noise"
        return f"motion not followed: {motion.why}{said}", []

    def reaches(self, index: int) -> bool:
        return index in self._by_index

    def between(self, later: int, k: int, earlier: int) -> np.ndarray | None:
        """Prompt k's transform from frame `later` (a link) to frame `earlier` (a link of the
        same chain, before or after it), or None where the chain does not tell."""
        a, b = self._by_index.get(later), self._by_index.get(earlier)
        if a is None or b is None or k >= len(a.regions) or a.to_origin[k] is None:
            return None
        s = _slot(b, k, a.regions[k], len(a.regions))
        if s is None or b.to_origin[s] is None:
            return None
        return invert(b.to_origin[s]) @ a.to_origin[k]

    def newest(self) -> Link | None:
        return self.links[-1] if self.links else None


def refine(estimator: MotionEstimator, ref: SmallFrame | None, cur: SmallFrame | None, prompts: list[Prompt],
           chained: list[np.ndarray]) -> list[np.ndarray]:
    """Per prompt, the chained transform from `cur`'s frame to `ref`'s, corrected by one
    direct estimate between the two pictures with `ref` first warped by it.

    Composed consecutive motions drift (their small errors add up: 3-7 px over 30 frames
    on the ground-truth sweeps), while a direct estimate between frames a second apart
    fails outright. Warped by the chain, `ref` lies within a pixel or two of `cur`, where
    the flow is exact: 0.5-1.6 px over 30-100 frames (docs/decisions.md). Where the
    correction is refused, the chain stands."""
    if ref is None or cur is None or ref.original_hw != cur.original_hw or ref.grey.shape != cur.grey.shape:
        return chained
    sx, sy = ref.scale
    out = []
    for p, c in zip(prompts, chained):
        grey = cv2.warpAffine(ref.grey, to_grid(c[:2], sx, sy), ref.grey.shape[::-1],
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        m = estimator.estimate(SmallFrame(grey, ref.original_hw, ref.factor), cur, [p])
        out.append(c @ homogeneous(m.prompts[0].matrix) if m.applied else c)
    return out


def as_motion(transforms: list[np.ndarray], regions, ms: float = 0.0) -> Motion:
    """Per prompt 3x3 transforms (this frame -> the embedding's) as a runtime.motion.Motion
    for map_prompts, warp_logits and the record."""
    prompts = [PromptMotion(t[:2].copy(), 0.0, 0.0) for t in transforms]
    still = all(np.allclose(t, EYE, atol=1e-9) for t in transforms)
    return Motion(prompts, list(regions), True, still=still, ms=ms)


def moved_share(a: Prompt, b: Prompt, hw: tuple[int, int]) -> float:
    """How far prompt b lies from prompt a, as a share of a's size: its box corners' and
    clicks' largest displacement over the box's longer side (clicks alone: the frame's
    shorter side). Different layouts (a box gained or lost, clicks added) are inf."""
    if (a.box is None) != (b.box is None) or len(a.points) != len(b.points) or \
            not np.array_equal(a.labels, b.labels):
        return float("inf")
    size = float(max(a.box[2] - a.box[0], a.box[3] - a.box[1])) if a.box is not None else float(min(hw))
    moves = [0.0]
    if a.box is not None:
        moves.append(float(np.abs(np.asarray(a.box, np.float64) - np.asarray(b.box, np.float64)).max()))
    if len(a.points):
        moves.append(float(np.hypot(*(np.asarray(a.points, np.float64) - b.points).T).max()))
    return max(moves) / max(size, 1.0)
