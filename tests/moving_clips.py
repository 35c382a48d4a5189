"""Synthetic clips that move by known amounts, for the motion and real-time tests: a smooth
textured picture with a bright object, frame i shifted by i * step pixels, fresh noise on
every frame (as speckle is), optionally a gain per frame (an endoscope's auto-exposure)."""

from __future__ import annotations

import cv2
import numpy as np


def moving(n: int, step=(1.0, 0.5), seed: int = 0, size=(240, 320), gain=None, rgb: bool = True,
           noise: float = 2.0) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB frames, or (n, H, W) grey with rgb False; noise: its std, grey levels."""
    rng = np.random.default_rng(seed)
    h, w = size
    big = cv2.GaussianBlur(rng.integers(0, 255, (h + 200, w + 200)).astype(np.float32), (0, 0), 3)
    big = cv2.normalize(big, None, 20, 120, cv2.NORM_MINMAX)
    cv2.ellipse(big, (w // 2 + 100, h // 2 + 100), (35, 28), 0, 0, 360, 220, -1)
    out = []
    for i in range(n):
        m = np.float32([[1, 0, -100 + step[0] * i], [0, 1, -100 + step[1] * i]])
        img = cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR) * (gain[i] if gain else 1.0)
        grey = np.clip(img + rng.normal(0, noise, (h, w)), 0, 255).astype(np.uint8)
        out.append(np.repeat(grey[:, :, None], 3, axis=2) if rgb else grey)
    return np.asarray(out)
