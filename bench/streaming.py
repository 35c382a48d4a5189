"""Streaming through the runtime: the reuse scenarios of bench/reuse.py (reuse off,
deterministic and real-time with motion compensation on and off, the Dice-vs-reuse
curve), and a long real-time run.

The long run loops a clip with the runtime's own loop option in real-time mode (paced
at the clip's frame rate, as a live probe would deliver it) and records every frame's
capture-to-mask latency, so flatness can be read from the first and last tenths.
"""

from __future__ import annotations

import time

import numpy as np

from medsam_edge.bench import reuse
from medsam_edge.bench.frames import parse_spec
from medsam_edge.runtime.geometry import centre_box


def scenario(predictor, spec: str, n_frames: int, thresholds, say=lambda s: None, realtime_predictor=None) -> dict:
    """bench/reuse.py's scenario on one clip spec ('clip.mp4@x0,y0,x1,y1'); the curve has
    reuse.THRESHOLDS and `thresholds`."""
    clip, boxes = parse_spec(spec)
    boxes = boxes if boxes is not None else _centre(clip)
    curve = sorted(set(reuse.THRESHOLDS) | set(thresholds))
    say(f"stream {clip}: reuse off, deterministic and real-time with motion compensation on and off, "
        f"Dice-vs-reuse curve at {', '.join(map(str, curve))} ({n_frames} frames)")
    t0 = time.perf_counter()
    out = reuse.measure(predictor, clip, boxes, n_frames, curve, realtime_predictor=realtime_predictor)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def long_run(predictor, spec: str, n_frames: int, fresh_by_index: dict | None = None, say=lambda s: None) -> dict:
    """Real-time mode over `n_frames` of a looped clip; Dice against fresh masks by clip position."""
    from medsam_edge.runtime.sources import open_source

    clip, boxes = parse_spec(spec)
    boxes = boxes if boxes is not None else _centre(clip)
    source = open_source(clip, loop=True)
    fps = source.fps or 30.0
    say(f"long run {clip}: {n_frames} frames in real-time mode at {fps:g} fps, about {n_frames / fps:.0f} s")
    stream = predictor.stream(source, prompts=boxes, realtime=True, pace=True, max_frames=n_frames)
    lat, stale, dices = [], [], []
    t0 = time.perf_counter()
    try:
        for r in stream:
            lat.append(r.latency_ms["capture_to_mask"])
            stale.append(r.staleness)
            fresh = (fresh_by_index or {}).get(r.frame.meta.get("position"))
            if fresh is not None:
                dices.extend(reuse.dice_vs([r], {r.frame.index: fresh}, only_reused=False))
    finally:
        source.close()
    wall = time.perf_counter() - t0
    return {"clip": clip, "frames_requested": n_frames, "frames": len(lat), "clip_fps": fps, "seconds": round(wall, 2),
            "fps": len(lat) / wall if wall else 0.0, "dropped": stream.stats.dropped + stream.stats.passed,
            "encoded": stream.stats.encoded,
            "reuse_rate": stream.stats.summary()["reuse_rate"],
            "staleness_mean": float(np.mean(stale)) if stale else None,
            "dice_vs_fresh_mean": float(np.mean(dices)) if dices else None,
            "dice_vs_fresh_min": float(np.min(dices)) if dices else None, "dice_count": len(dices),
            **reuse.latency_rows_from(lat), "tenths_ms": tenths(lat), "trend": trend(lat),
            "capture_to_mask_samples_ms": [round(x, 2) for x in lat]}


def tenths(lat: list[float]) -> list[dict]:
    """p50/p99 of each tenth of the run, in order: growing lag shows as a rising p99."""
    if len(lat) < 10:
        return []
    return [reuse.pct(chunk) for chunk in np.array_split(np.asarray(lat), 10)]


def trend(lat: list[float]) -> dict:
    """Least-squares slope of capture-to-mask after the start-up tenth: growing lag is a positive rise.

    rise_ms is the fitted change from the first to the last frame of that span; a run whose
    queues stay bounded has a rise near zero whatever its single worst frames do.
    """
    a = np.asarray(lat[len(lat) // 10:], np.float64)
    if a.size < 10:
        return {}
    slope = float(np.polyfit(np.arange(a.size), a, 1)[0])
    return {"slope_ms_per_1000_frames": round(slope * 1000, 2), "rise_ms": round(slope * (a.size - 1), 2),
            "median_ms": round(float(np.median(a)), 2)}


def _centre(clip: str) -> np.ndarray:
    from medsam_edge.runtime.sources import open_source

    with open_source(clip) as src:
        frame = next(iter(src))
    return centre_box(frame.height, frame.width)[None]
