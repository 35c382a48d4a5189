"""Dice against the truth on ground-truth clips (bench/clips.py), mode by mode.

Every mode starts from the first frame's true box and tracks (`--track`), as a user would
run it; the rows differ only in how embeddings are made:
- fresh every frame (reuse off): the ceiling the other modes are judged against;
- deterministic reuse (the default ReusePolicy, motion compensation on);
- real-time at 30 and 60 fps (bench/lockstep.py: frames submitted at the capture rate).
Each row has Dice against the truth over the frames answered and a flicker figure: how
much the mask changes between consecutive answers beyond what the true motion explains
(1 - Dice of the earlier mask moved by the true motion against the later one). The
truth's own flicker (interpolation only) is given as its floor.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from medsam_edge.bench.clips import Clip, relative, warp_mask
from medsam_edge.bench.lockstep import Played, play
from medsam_edge.metrics import dice

REALTIME_FPS = (30.0, 60.0)


def dice_to_truth(masks: dict[int, np.ndarray], truth_at: Callable[[int], np.ndarray]) -> list[float]:
    """Dice of each answered frame's mask against its truth, in frame order."""
    return [dice(masks[i], truth_at(i)) for i in sorted(masks)]


def flicker(masks: dict[int, np.ndarray], matrix_at: Callable[[int], np.ndarray]) -> list[float]:
    """1 - Dice between each answer and the previous answer moved by the true motion between
    their frames: 0 where the mask moves exactly as the anatomy does."""
    order = sorted(masks)
    out = []
    for a, b in zip(order, order[1:]):
        moved = warp_mask(masks[a], relative(matrix_at(a), matrix_at(b)))
        out.append(1.0 - dice(moved, masks[b]))
    return out


def summary(values: list[float], prefix: str) -> dict:
    if not values:
        return {f"{prefix}_mean": None, f"{prefix}_min": None, f"{prefix}_p5": None}
    a = np.asarray(values, np.float64)
    return {f"{prefix}_mean": round(float(a.mean()), 4), f"{prefix}_min": round(float(a.min()), 4),
            f"{prefix}_p5": round(float(np.percentile(a, 5)), 4)}


def flicker_summary(values: list[float]) -> dict:
    if not values:
        return {"flicker_mean": None, "flicker_p95": None}
    a = np.asarray(values, np.float64)
    return {"flicker_mean": round(float(a.mean()), 4), "flicker_p95": round(float(np.percentile(a, 95)), 4)}


def judged(mode: str, clip: Clip, masks: dict[int, np.ndarray], frames: int, seconds: float, **extra) -> dict:
    """A row: Dice vs truth and flicker over the answered frames of `clip` (indices past the
    clip's length wrap, as a looped run's do)."""
    n = len(clip)
    return {"mode": mode, "frames": frames, "answered": len(masks), "seconds": round(seconds, 2),
            "masks_per_s": round(len(masks) / seconds, 2) if seconds else None,
            **summary(dice_to_truth(masks, lambda i: clip.truths[i % n]), "dice"),
            **flicker_summary(flicker(masks, lambda i: clip.matrix(i % n))), **extra}


def deterministic(predictor, clip: Clip, reuse: str) -> tuple[dict[int, np.ndarray], dict, int, float]:
    """Every frame through a deterministic session tracking from the first true box."""
    masks, lost = {}, 0
    t0 = time.perf_counter()
    with predictor.session(prompts=clip.box0[None], track=True, reuse=reuse) as s:
        for i, image in enumerate(clip.frames):
            r = s.process(image)
            masks[i] = r.masks[0] if len(r.masks) else np.zeros(clip.truths[i].shape, bool)
            lost += bool(r.lost and r.lost[0])
        stats = s.stats.summary()
    return masks, stats, lost, time.perf_counter() - t0


def realtime(predictor, clip: Clip, fps: float) -> tuple[dict[int, np.ndarray], Played]:
    played = play(predictor, lambda i: clip.frames[i], len(clip), fps, clip.box0[None], track=True)
    return {a.index: a.mask for a in played.answers}, played


def made_counts(played: Played) -> dict:
    """How the answers were made: the runtime's `made` where it records it, else its reuse kind."""
    out: dict[str, int] = {}
    for a in played.answers:
        k = a.made or a.reuse
        out[k] = out.get(k, 0) + 1
    return out


def clip_rows(predictor, clip: Clip, fps_list=REALTIME_FPS, say=lambda s: None) -> dict:
    """Every mode's row on one clip, with the truth's own flicker and each row's gap to the ceiling."""
    rows = []
    say(f"truth {clip.name}: fresh every frame ({len(clip)} frames)")
    masks, stats, lost, secs = deterministic(predictor, clip, "off")
    rows.append(judged("fresh every frame", clip, masks, len(clip), secs, reuse_rate=stats["reuse_rate"], lost=lost,
                       encoded=stats["encoded"]))
    say(f"truth {clip.name}: deterministic reuse")
    masks, stats, lost, secs = deterministic(predictor, clip, "on")
    rows.append(judged("deterministic reuse", clip, masks, len(clip), secs, reuse_rate=stats["reuse_rate"], lost=lost,
                       encoded=stats["encoded"]))
    for fps in fps_list:
        say(f"truth {clip.name}: real-time at {fps:g} fps")
        masks, played = realtime(predictor, clip, fps)
        rows.append(judged(f"real-time {fps:g} fps", clip, masks, len(clip), played.seconds, fps=fps,
                           dropped=played.dropped, encoded=played.encoded,
                           answered_share_after_first=played.answered_share_after_first(),
                           lost=sum(a.lost for a in played.answers), made=made_counts(played),
                           late_submits=played.late_submits))
    for r in rows:
        say(f"truth {clip.name}: {r['mode']}: {r['answered']} answered, Dice vs truth {r['dice_mean']}, "
            f"flicker {r['flicker_mean']}")
    ceiling = rows[0]["dice_mean"]
    for r in rows:
        r["dice_gap_to_ceiling"] = None if r["dice_mean"] is None or ceiling is None else round(ceiling - r["dice_mean"], 4)
    truth = {i: t for i, t in enumerate(clip.truths)}
    return {"clip": clip.describe(), "truth_flicker": flicker_summary(flicker(truth, clip.matrix)), "rows": rows}
