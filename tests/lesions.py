"""Synthetic calibration pictures: grey noise with one bright ellipse (the 'lesion') and its
mask, and encoder inputs with a blob, made here so calibration tests need nothing from
../shared."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def lesion_pictures(folder: Path, masks: Path | None, n: int, seed: int = 0, prefix: str = "img") -> None:
    """n PNGs in `folder` (two sizes, alternating) and, if `masks`, their masks under the same names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    if masks:
        masks.mkdir(parents=True)
    for k in range(n):
        h, w = (96, 128) if k % 2 else (120, 100)
        img = rng.normal(60, 20, (h, w)).clip(0, 255).astype(np.uint8)
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (w // 2 + int(rng.integers(-15, 15)), h // 2), (int(rng.integers(12, 25)), 14), 0, 0, 360, 255, -1)
        img[m > 0] = np.clip(img[m > 0].astype(int) + 110, 0, 255)
        cv2.imwrite(str(folder / f"{prefix}{k:02d}.png"), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
        if masks:
            cv2.imwrite(str(masks / f"{prefix}{k:02d}.png"), m)


def blob_inputs(size: int, n: int = 2) -> list[dict]:
    """n encoder inputs (IMAGE: (1, 3, size, size) float32 in 0..1): a soft bright blob that
    moves right from one to the next, over noise; seed 0."""
    from medsam_edge.contract import IMAGE

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for k in range(n):
        blob = np.exp(-((xx - 0.4 - 0.2 * k) ** 2 + (yy - 0.5) ** 2) / (2 * 0.15 ** 2))
        img = np.clip(blob[None] * 0.8 + rng.normal(0, 0.05, (3, size, size)), 0, 1)
        out.append({IMAGE: img[None].astype(np.float32)})
    return out
