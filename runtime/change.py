"""How much the picture changed where a prompt is, beyond what motion, gain and noise explain.

Reuse asks whether a kept embedding may answer this frame. The plain difference between
the two frames cannot say: ultrasound speckle and sensor noise are drawn afresh on every
frame, and warping the embedding's frame to this one (motion compensation) blurs its fine
grain, so on a probe that moves, or a noisy picture that does not, the difference stays
far above anything a still, clean picture shows even when the anatomy is the same
(docs/decisions.md#noise-aware-reuse). What changes an answer is structure: an edge that
moved further than the motion says, something that appeared. So the change is judged on
the difference after motion compensation,

- with a small change of gain levelled first (an endoscope's auto-exposure, a sonographer's
  gain knob nudged: the answer does not change with it; a larger one is a change);
- smoothed over a few cells, where fine-grained noise averages out and structure stays;
- less the share of that smoothed difference the difference's own fine grain predicts
  (its noise, estimated from the difference itself, passed through the same smoothing).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from medsam_edge.runtime.motion import level, region_cells
from medsam_edge.runtime.small_frame import SmallFrame

# Smoothing of the difference, in cells (a region is judged on at most 32 x 32).
SIGMA = 2.0
# Immerkaer's noise estimator: a mask that cancels planes and ramps, so smooth change does
# not read as noise (J. Immerkaer, "Fast noise variance estimation", CVIU 64(2), 1996).
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
# White noise of std s smoothed by a Gaussian of SIGMA cells keeps s / (2 sqrt(pi) SIGMA);
# its mean absolute value is sqrt(2 / pi) of that.
_NOISE_LEFT = math.sqrt(2 / math.pi) / (2 * math.sqrt(math.pi) * SIGMA)


def noise_std(d: np.ndarray) -> float:
    """Standard deviation of the white noise in `d` (2-D, at least 3x3), robust to smooth change."""
    if min(d.shape) < 3:
        return 0.0
    r = cv2.filter2D(d, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(r).mean() / 6.0)


def region_change(emb: SmallFrame, cur: SmallFrame, region, matrix: np.ndarray) -> float | None:
    """Change (0..1 of the grey range) over `region` of this frame against the embedding's
    frame seen through `matrix`, beyond gain and noise (see the module). None when no cell of
    the region has a counterpart inside the embedding's picture."""
    cells = region_cells(emb, cur, region, matrix)
    if cells is None:
        return None
    a, b, ok = cells
    gain = level(a[ok], b[ok])
    d = np.where(ok, a - gain * b, 0.0).astype(np.float32)
    weight = cv2.GaussianBlur(ok.astype(np.float32), (0, 0), SIGMA, borderType=cv2.BORDER_CONSTANT)
    smooth = cv2.GaussianBlur(d, (0, 0), SIGMA, borderType=cv2.BORDER_CONSTANT)
    # Normalised by the smoothed weight: cells near the region's (or the picture's) edge
    # average fewer neighbours, not zeros.
    inner = ok & (weight > 0.25)
    if not inner.any():
        return float(np.abs(d[ok]).mean()) / 255.0
    structure = float(np.abs(smooth[inner] / weight[inner]).mean())
    return max(0.0, structure - _NOISE_LEFT * noise_std(d)) / 255.0
