"""Agreement with the reference: masks (Dice, IoU) and embeddings (cosine) per frame.

The thresholds are data, recorded in every report. The defaults are the precision
issue's INT8 targets (mean mask Dice >= 0.97, 5th percentile >= 0.93) plus an
embedding cosine floor: a row faster than the reference that misses any of them is
flagged in the table, never dropped from it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medsam_edge.metrics import cosine, dice, iou

THRESHOLDS = {"dice_mean": 0.97, "dice_p5": 0.93, "cosine_min": 0.99}


def compare(masks: np.ndarray, ref_masks: np.ndarray, embedding: np.ndarray, ref_embedding: np.ndarray) -> dict:
    """One frame: per-box Dice and IoU, and the embedding cosine."""
    if masks.shape != ref_masks.shape:
        raise ValueError(f"mask shape {masks.shape} differs from the reference's {ref_masks.shape}")
    return {
        "dice": [round(dice(m, r), 6) for m, r in zip(masks, ref_masks)],
        "iou": [round(iou(m, r), 6) for m, r in zip(masks, ref_masks)],
        "cosine": round(cosine(embedding, ref_embedding), 7) if embedding.shape == ref_embedding.shape else None,
    }


def aggregate(per_frame: Sequence[dict]) -> dict:
    """Aggregate per-frame comparisons: mean, 5th percentile and worst."""
    d = np.array([v for f in per_frame for v in f["dice"]], np.float64)
    j = np.array([v for f in per_frame for v in f["iou"]], np.float64)
    c = np.array([f["cosine"] for f in per_frame if f.get("cosine") is not None], np.float64)
    if d.size == 0:
        return {"masks": 0}
    out = {"masks": int(d.size), "dice_mean": _r(d.mean()), "dice_p5": _r(np.percentile(d, 5)), "dice_min": _r(d.min()),
           "iou_mean": _r(j.mean()), "iou_min": _r(j.min())}
    if c.size:
        out.update(cosine_mean=_r(c.mean(), 7), cosine_min=_r(c.min(), 7))
    return out


def verdict(summary: dict, speedup: float | None, thresholds: dict = THRESHOLDS) -> list[str]:
    """Why a row is flagged: faster than the reference but below a fidelity threshold."""
    if not summary.get("masks") or speedup is None or speedup <= 1.0:
        return []
    misses = []
    for key, floor in thresholds.items():
        value = summary.get(key)
        if value is not None and value < floor:
            misses.append(f"{key} {value:.4f} < {floor}")
    return misses


def _r(v: float, digits: int = 5) -> float:
    return round(float(v), digits)
