"""What embedding reuse buys and costs on a real clip.

Runs the clip with reuse off (every frame encoded: the fresh reference), then with reuse
on at several thresholds, then in real-time mode, all in one process on the same boxes.
Reports frames per second, reuse rate, dropped frames, capture-to-mask latency (first
and second half of the clip, to show it stays flat), and the Dice of every
reused-embedding mask against the fresh-embedding mask of the same frame.

    python -m medsam_edge.bench.reuse models/lite_medsam ../shared/data/ultrasound/video/busi_sweep.mp4 \
        --box 100,160,240,300 --frames 150 --out out/reuse_busi.json

`measure()` is the same scenario as a function; `medsam-edge bench --stream` calls it.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

from medsam_edge.atomic import write_json
from medsam_edge.metrics import dice
from medsam_edge.runtime import Predictor
from medsam_edge.runtime.prompts import parse_box
from medsam_edge.runtime.reuse import ReusePolicy
from medsam_edge.runtime.sources import ArraySource, open_source

THRESHOLDS = (0.0025, 0.005, 0.01)


def pct(values, qs=(50, 99)) -> dict:
    a = np.asarray(values, float)
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in qs} if len(a) else {}


def latency_rows(results) -> dict:
    return latency_rows_from([r.latency_ms["capture_to_mask"] for r in results if "capture_to_mask" in r.latency_ms])


def latency_rows_from(lat: list[float]) -> dict:
    """Capture-to-mask p50/p99 overall and per half: a flat run has equal halves."""
    half = len(lat) // 2
    return {"capture_to_mask_ms": pct(lat), "first_half_ms": pct(lat[:half]), "second_half_ms": pct(lat[half:])}


def dice_vs(results, fresh_by_index: dict, only_reused: bool) -> list[float]:
    return [dice(r.masks[i], fresh_by_index[r.frame.index].masks[i]) for r in results
            if r.frame.index in fresh_by_index and not (only_reused and r.fresh) for i in range(len(r.masks))]


def _timed(stream) -> tuple[list, float]:
    t0 = time.perf_counter()
    results = list(stream)
    return results, time.perf_counter() - t0


def _row(mode: str, results: list, seconds: float, dices: list[float], **extra) -> dict:
    n = max(1, len(results))
    return {"mode": mode, "frames": len(results), "seconds": round(seconds, 3), "fps": len(results) / seconds,
            "reuse_rate": sum(not r.fresh for r in results) / n,
            "dice_mean": float(np.mean(dices)) if dices else 1.0, "dice_min": float(np.min(dices)) if dices else 1.0,
            "dice_count": len(dices), **latency_rows(results), **extra,
            "samples": [{"index": r.frame.index, "reuse": r.reuse, "staleness": r.staleness,
                         **{k: round(v, 2) for k, v in r.latency_ms.items()}} for r in results]}


def measure(predictor: Predictor, clip: str, boxes, n_frames: int = 150, thresholds=THRESHOLDS,
            max_consecutive: int = ReusePolicy.max_consecutive, realtime: bool = True,
            realtime_predictor: Predictor | None = None) -> dict:
    """Reuse off, reuse on at each threshold, real-time: one row each, on the same frames and boxes.

    realtime_predictor: the one opened for real-time mode (its threads split between encoder
    and decoder); `predictor` if not given.
    """
    with open_source(clip) as src:
        fps = src.fps or 30.0
        frames = [f.image for f in islice(src, n_frames)]
    prompts = np.asarray(boxes, np.float32).reshape(-1, 4)

    def stream(policy):
        return predictor.stream(ArraySource(np.asarray(frames), fps=fps), prompts=prompts, reuse=policy,
                                realtime=False)

    fresh, t_fresh = _timed(stream(ReusePolicy.off()))
    by_index = {f.frame.index: f for f in fresh}
    rows = [_row("reuse off", fresh, t_fresh, [], dropped=0, encoded=len(fresh))]
    for th in thresholds:
        policy = ReusePolicy(exact=True, near=True, threshold=th, max_consecutive=max_consecutive)
        res, t = _timed(stream(policy))
        rows.append(_row(f"reuse on, threshold {th}", res, t, dice_vs(res, by_index, only_reused=True),
                         dropped=0, encoded=sum(r.fresh for r in res)))
    if realtime:
        rt = (realtime_predictor or predictor).stream(ArraySource(np.asarray(frames), fps=fps), prompts=prompts,
                                                      realtime=True, pace=True)
        res, t = _timed(rt)
        rows.append(_row(f"real-time at {fps:g} fps", res, t, dice_vs(res, by_index, only_reused=False),
                         dropped=rt.stats.dropped, encoded=rt.stats.encoded))
    return {"clip": str(clip), "frames": len(frames), "clip_fps": fps, "boxes": np.asarray(boxes).tolist(),
            "model": predictor.model_dir.model_id, "backend": predictor.backend.name, "rows": rows,
            "fresh_masks": by_index}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("clip")
    ap.add_argument("--box", action="append", required=True)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--thresholds", default=",".join(str(t) for t in THRESHOLDS))
    ap.add_argument("--max-consecutive", type=int, default=ReusePolicy.max_consecutive)
    ap.add_argument("--backend", default="onnxruntime-cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    pred = Predictor(args.model_dir, backend=args.backend)
    result = measure(pred, args.clip, [parse_box(b) for b in args.box], args.frames,
                     [float(x) for x in args.thresholds.split(",")], args.max_consecutive)
    result.pop("fresh_masks")
    print(f"clip {args.clip}: {result['frames']} frames at {result['clip_fps']:g} fps, {result['model']}, "
          f"{result['backend']}")
    print("| mode | fps | reuse rate | Dice reused vs fresh (mean / min) | extra |")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        extra = {k: r[k] for k in ("dropped", "encoded", "capture_to_mask_ms", "first_half_ms", "second_half_ms")}
        print(f"| {r['mode']} | {r['fps']:.2f} | {r['reuse_rate']:.2f} | {r['dice_mean']:.4f} / {r['dice_min']:.4f} | "
              f"{extra} |")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
