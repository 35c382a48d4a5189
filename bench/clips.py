"""Clips whose true mask is known on every frame: a real image with its expert mask moved
along a smooth probe sweep (translation, a few degrees of rotation, zoom), with fresh
speckle or noise on every frame.

The fresh reference changes between neighbouring frames of a real clip (0.83-0.99 Dice on
the shared clips), so it cannot judge a real-time mask alone; here the truth moves exactly
as the sweep says, so every mode is judged against the same truth.

    clip = make_clip(rgb, mask, n_frames=150, fps=30)
    clip.frames[i], clip.truths[i], clip.matrix(i)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# The annotated image sets in ../shared/data: (images, masks, noise kind).
SETS = {
    "busi": ("ultrasound/busi/images", "ultrasound/busi/masks", "speckle"),
    "kvasir": ("endoscopy/kvasir_seg/images", "endoscopy/kvasir_seg/masks", "gaussian"),
}
# Images are brought to this longest side so every clip costs about the same per frame.
MAX_SIDE = 512


@dataclass(frozen=True)
class Sweep:
    """A probe sweep: each motion a sine of its own period, all zero at t = 0 (so frame 0
    is the image itself). shift: amplitude as a share of width and height; rotate_deg:
    amplitude in degrees (counter-clockwise positive, as cv2.getRotationMatrix2D); zoom:
    amplitude of the scale about 1. Periods of several seconds: a hand moving a probe."""

    shift: tuple[float, float] = (0.10, 0.06)
    rotate_deg: float = 4.0
    zoom: float = 0.08
    periods_s: tuple[float, float, float, float] = (6.0, 8.0, 7.0, 9.0)

    def pose(self, t: float, width: int, height: int) -> dict:
        """dx, dy (pixels), angle (degrees) and scale at time t seconds."""
        px, py, pa, ps = (2 * math.pi * t / p for p in self.periods_s)
        return {"dx": self.shift[0] * width * math.sin(px), "dy": self.shift[1] * height * math.sin(py),
                "angle": self.rotate_deg * math.sin(pa), "scale": 1.0 + self.zoom * math.sin(ps)}

    @staticmethod
    def still() -> "Sweep":
        return Sweep(shift=(0.0, 0.0), rotate_deg=0.0, zoom=0.0)


def pose_matrix(pose: dict, width: int, height: int) -> np.ndarray:
    """2x3 affine: rotate and scale about the picture's centre, then shift."""
    m = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), pose["angle"], pose["scale"])
    m[0, 2] += pose["dx"]
    m[1, 2] += pose["dy"]
    return m


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x3 affine taking frame a's pixels to frame b's (both given from frame 0)."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (b3 @ np.linalg.inv(a3))[:2]


def warp_mask(mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    return cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0


def box_of(mask: np.ndarray) -> np.ndarray | None:
    """(4,) float32 x0, y0, x1, y1 of a mask, or None when empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@dataclass
class Clip:
    name: str
    frames: list[np.ndarray]  # HxWx3 uint8 RGB
    truths: list[np.ndarray]  # HxW bool
    poses: list[dict]
    fps: float
    noise: str
    sweep: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def matrix(self, i: int) -> np.ndarray:
        h, w = self.truths[0].shape
        return pose_matrix(self.poses[i], w, h)

    @property
    def box0(self) -> np.ndarray:
        return box_of(self.truths[0])

    def describe(self) -> dict:
        h, w = self.truths[0].shape
        return {"name": self.name, "frames": len(self), "fps": self.fps, "size": [w, h], "noise": self.noise,
                "sweep": self.sweep, "truth_area_first": int(self.truths[0].sum())}


def add_noise(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """speckle: multiplicative gamma noise (mean 1, as fully developed ultrasound speckle
    averaged over a few looks) plus a little electronic noise; gaussian: sensor noise and
    a small brightness flicker, as an endoscope's auto-exposure gives."""
    x = image.astype(np.float32)
    if kind == "speckle":
        looks = 6.0
        x = x * rng.gamma(looks, 1.0 / looks, size=x.shape[:2])[..., None] + rng.normal(0, 3.0, x.shape[:2])[..., None]
    elif kind == "gaussian":
        x = x * rng.uniform(0.95, 1.05) + rng.normal(0, 6.0, x.shape)
    elif kind != "none":
        raise ValueError(f"noise {kind!r}: expected speckle, gaussian or none")
    return np.clip(x, 0, 255).astype(np.uint8)


def make_clip(image: np.ndarray, mask: np.ndarray, n_frames: int, fps: float = 30.0, sweep: Sweep | None = None,
              noise: str = "speckle", seed: int = 0, name: str = "clip") -> Clip:
    """Frames and true masks of `image` (HxWx3 uint8 RGB) and `mask` (HxW bool) moved along
    `sweep` (default Sweep()), noise fresh on every frame from `seed`."""
    sweep = sweep or Sweep()
    h, w = mask.shape
    rng = np.random.default_rng(seed)
    frames, truths, poses = [], [], []
    for i in range(n_frames):
        pose = sweep.pose(i / fps, w, h)
        m = pose_matrix(pose, w, h)
        moved = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(0, 0, 0))
        frames.append(add_noise(moved, noise, rng))
        truths.append(warp_mask(mask, m))
        poses.append(pose)
    return Clip(name, frames, truths, poses, fps, noise,
                sweep={"shift": list(sweep.shift), "rotate_deg": sweep.rotate_deg, "zoom": sweep.zoom,
                       "periods_s": list(sweep.periods_s)})


def annotated(data: Path, set_name: str, limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to `limit` (name, rgb, mask) of a set in SETS, in file order, each with a lesion
    that stays clear of the border (so the sweep keeps it in view), at most MAX_SIDE a side."""
    images, masks, _ = SETS[set_name]
    out = []
    for img_path in sorted((data / images).iterdir()):
        mask_path = data / masks / img_path.name
        if len(out) >= limit or not mask_path.is_file():
            continue
        bgr = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        grey = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if bgr is None or grey is None or grey.shape != bgr.shape[:2]:
            continue
        scale = min(1.0, MAX_SIDE / max(grey.shape))
        if scale < 1.0:
            size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_NEAREST)
        mask = grey > 127
        box = box_of(mask)
        h, w = mask.shape
        # The sweep shifts by up to 10% and zooms by 8%: a lesion within 15% of the edge could leave.
        if box is None or box[0] < 0.15 * w or box[1] < 0.15 * h or box[2] > 0.85 * w or box[3] > 0.85 * h:
            continue
        out.append((img_path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), mask))
    return out


def shared_clips(data: Path, per_set: int, n_frames: int, fps: float = 30.0) -> list[Clip]:
    """Ground-truth clips from the BUSI and Kvasir images under `data` (per_set of each)."""
    clips = []
    for set_name, (_, _, noise) in SETS.items():
        if not (data / SETS[set_name][0]).is_dir():
            continue
        for k, (name, rgb, mask) in enumerate(annotated(data, set_name, per_set)):
            clips.append(make_clip(rgb, mask, n_frames, fps, noise=noise, seed=k, name=f"{set_name}:{name}"))
    return clips
