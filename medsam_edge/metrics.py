"""Agreement measures shared by export parity, calibration reports and benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks agree perfectly (1.0)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    """||x - ref|| / ||ref|| (Frobenius), the figure export parity is judged by."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    n = float(np.linalg.norm(ref))
    return float(np.linalg.norm(x - ref)) / (n if n > 0 else 1.0)


def cosine(x: np.ndarray, ref: np.ndarray) -> float:
    x, ref = np.asarray(x, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    n = float(np.linalg.norm(x) * np.linalg.norm(ref))
    return float(x @ ref) / n if n > 0 else 1.0
