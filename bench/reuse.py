"""What embedding reuse buys and costs on a real clip.

Runs the clip with reuse off (every frame encoded: the fresh reference), then with reuse
on at several thresholds, then in real-time mode, all in one process on the same boxes.
Reports frames per second, reuse rate, and the Dice of every reused-embedding mask
against the fresh-embedding mask of the same frame.

    python bench/reuse.py models/lite_medsam ../shared/data/ultrasound/video/busi_sweep.mp4 \
        --box 100,160,240,300 --frames 150 --out out/reuse_busi.json
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
from medsam_edge.runtime.pipeline import Prompter, Stream
from medsam_edge.runtime.prompts import BoxSchedule, parse_box
from medsam_edge.runtime.realtime import RealtimeStream
from medsam_edge.runtime.reuse import ReusePolicy
from medsam_edge.runtime.sources import ArraySource, open_source


def _run(stream) -> tuple[list, float]:
    t0 = time.perf_counter()
    results = list(stream)
    return results, time.perf_counter() - t0


def _pct(values, qs=(50, 99)) -> dict:
    a = np.asarray(values, float)
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in qs} if len(a) else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("clip")
    ap.add_argument("--box", action="append", required=True)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--thresholds", default="0.0025,0.005,0.01")
    ap.add_argument("--max-consecutive", type=int, default=ReusePolicy.max_consecutive)
    ap.add_argument("--backend", default="onnxruntime-cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    frames = [f.image for f in islice(open_source(args.clip), args.frames)]
    src = open_source(args.clip)
    fps = src.fps or 30.0
    src.close()
    pred = Predictor(args.model_dir, backend=args.backend)
    schedule = BoxSchedule.constant([parse_box(b) for b in args.box])

    def stream(policy):
        return Stream(pred.segmenter, ArraySource(np.asarray(frames), fps=fps), Prompter(schedule, None), policy)

    fresh, t_fresh = _run(stream(ReusePolicy.off()))
    rows = [{"mode": "reuse off", "fps": len(fresh) / t_fresh, "reuse_rate": 0.0, "dice_mean": 1.0, "dice_min": 1.0}]
    for th in [float(x) for x in args.thresholds.split(",")]:
        policy = ReusePolicy(exact=True, near=True, threshold=th, max_consecutive=args.max_consecutive)
        res, t = _run(stream(policy))
        reused = [dice(r.masks[i], f.masks[i]) for r, f in zip(res, fresh) if not r.fresh for i in range(len(r.masks))]
        rows.append({"mode": f"reuse on, threshold {th}", "fps": len(res) / t,
                     "reuse_rate": sum(not r.fresh for r in res) / len(res),
                     "dice_mean": float(np.mean(reused)) if reused else 1.0,
                     "dice_min": float(np.min(reused)) if reused else 1.0})
    rt = RealtimeStream(pred.segmenter, ArraySource(np.asarray(frames), fps=fps), Prompter(schedule, None), pace=True)
    res, t = _run(rt)
    by_index = {f.frame.index: f for f in fresh}
    rt_dice = [dice(r.masks[i], by_index[r.frame.index].masks[i]) for r in res for i in range(len(r.masks))]
    lat = [r.latency_ms["capture_to_mask"] for r in res]
    half = len(lat) // 2
    rows.append({"mode": f"real-time at {fps:g} fps", "fps": len(res) / t,
                 "reuse_rate": sum(not r.fresh for r in res) / max(1, len(res)),
                 "dice_mean": float(np.mean(rt_dice)), "dice_min": float(np.min(rt_dice)),
                 "dropped": rt.stats.dropped, "encoded": rt.encoded,
                 "capture_to_mask_ms": _pct(lat), "first_half_ms": _pct(lat[:half]), "second_half_ms": _pct(lat[half:])})

    print(f"clip {args.clip}: {len(frames)} frames at {fps:g} fps, {pred.model_dir.model_id}, {pred.backend.name}")
    print("| mode | fps | reuse rate | Dice reused vs fresh (mean / min) | extra |")
    print("|---|---|---|---|---|")
    for r in rows:
        extra = {k: r[k] for k in ("dropped", "encoded", "capture_to_mask_ms", "first_half_ms", "second_half_ms") if k in r}
        print(f"| {r['mode']} | {r['fps']:.2f} | {r['reuse_rate']:.2f} | {r['dice_mean']:.4f} / {r['dice_min']:.4f} | "
              f"{extra or ''} |")
    if args.out:
        write_json(args.out, {"clip": str(args.clip), "frames": len(frames), "model": pred.model_dir.model_id,
                              "backend": pred.backend.name, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
