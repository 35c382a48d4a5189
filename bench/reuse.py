"""What embedding reuse buys and costs on real clips, with and without motion compensation.

For each clip, in one process on the same frames and boxes:
- reuse off: every frame encoded; its masks are the fresh reference;
- deterministic mode with the default ReusePolicy, motion compensation on, then off;
- the Dice-vs-reuse curve: the default policy at each threshold of `thresholds`, with and
  without compensation. The encoder is not run again for it: each frame's embedding from
  the reuse-off pass is handed back when the runtime asks for that frame (the decoder
  runs for real), so a curve costs decoder time only and its rows have no fps;
- real-time mode at the clip's frame rate (paced as a live probe delivers it), motion
  compensation on, then off;
- the fresh reference against itself k frames earlier (reference_stability): what any
  reused answer pays where the model answers a frame differently from its neighbour.
Rows report masks per second, reuse rate, dropped frames, capture-to-mask latency (first
and second half, to show it stays flat), Dice of every mask against the fresh mask of the
same frame (over all frames: `dice_mean`, and over reused ones: `dice_reused_mean`), and
what the motion estimate cost next to the decoder per frame.

    python -m medsam_edge.bench.reuse models/lite_medsam --shared ../shared/data --out out/reuse.json
    python -m medsam_edge.bench.reuse models/lite_medsam clip.mp4@100,160,240,300 --frames 150

`measure()` is the same scenario as a function; `medsam-edge bench --stream` calls it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medsam_edge.atomic import write_json
from medsam_edge.bench.cells import number
from medsam_edge.engines.base import Backend
from medsam_edge.metrics import dice
from medsam_edge.runtime import Predictor
from medsam_edge.runtime.reuse import ReusePolicy
from medsam_edge.runtime.sources import ArraySource, open_source

# The Dice-vs-reuse curve's thresholds (ReusePolicy.threshold: mean absolute difference
# in a prompt's region, fraction of 0..255).
THRESHOLDS = (0.003, 0.004, 0.005, 0.0055, 0.006, 0.0065, 0.008, 0.01, 0.015, 0.02)
# Frame distances at which the fresh reference is compared with itself (reference_stability).
STABILITY_LAGS = (1, 2, 5, 10, 30)
# Every shared moving clip with the box its numbers are for (x0, y0, x1, y1 on frame 0):
# busi and echo as BENCHMARKS.md has always used them, the others an object picked on the
# first frame (a structure in each lung fan, the gallbladder, the instrument).
SHARED_CLIPS = {
    "ultrasound/video/busi_sweep.mp4": (100, 160, 240, 300),
    "ultrasound/video/echo_apical_loop.mp4": (160, 60, 210, 125),
    "ultrasound/video/lung_Cov_convex_volpecelli_sonographic_v1.mov": (150, 20, 300, 100),
    "ultrasound/video/lung_Reg_Image_181206_crop.mp4": (20, 85, 200, 125),
    "ultrasound/video/lung_Reg_Image_182340_crop.mp4": (170, 60, 250, 250),
    "ultrasound/video/lung_Reg_pat1Image_132943.mpeg": (120, 50, 210, 200),
    "ultrasound/video/lung_Vir_prospective_file1.mp4": (100, 80, 250, 200),
    "endoscopy/video/lap_cholec80_VID25_324_and_VID43_743_a.mp4": (230, 0, 460, 230),
    "endoscopy/video/lap_cholec80_VID43_147_and_VID42_3625_a.mp4": (480, 0, 690, 170),
}


def shared_specs(data: Path) -> list[str]:
    """'clip@x0,y0,x1,y1' for every shared moving clip under `data` that exists."""
    return [f"{data / rel}@{','.join(str(v) for v in box)}" for rel, box in SHARED_CLIPS.items()
            if (data / rel).is_file()]


def pct(values, qs=(50, 99)) -> dict:
    a = np.asarray(values, float)
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in qs} if len(a) else {}


def latency_rows(results) -> dict:
    return latency_rows_from([r.latency_ms["capture_to_mask"] for r in results if "capture_to_mask" in r.latency_ms])


def latency_rows_from(lat: list[float]) -> dict:
    """Capture-to-mask p50/p99 overall and per half: a flat run has equal halves."""
    half = len(lat) // 2
    return {"capture_to_mask_ms": pct(lat), "first_half_ms": pct(lat[:half]), "second_half_ms": pct(lat[half:])}


def bounce(n: int) -> Callable[[int], int]:
    """Frame index -> clip position of a clip of n frames played forward, backward,
    forward... (a looped run's indices keep growing past the clip's)."""
    period = max(1, 2 * n - 2)

    def position(index: int) -> int:
        p = index % period
        return p if p < n else period - p

    return position


def reference_stability(fresh_masks: dict, lags: Sequence[int] = STABILITY_LAGS, bound: float = 0.95) -> dict:
    """How much the fresh reference changes by itself: Dice of each frame's fresh masks
    against those of the frame `lag` earlier ({frame index: masks}), per lag: mean, min and
    the share of pairs under `bound`. Where nothing moved, an answer reused from the earlier
    frame's embedding is that frame's fresh mask, so it differs from the fresh one this much:
    motion compensation recovers what moved, not the model answering a speckled or
    re-compressed picture differently. Between neighbours little moves, so lag 1 is close to
    the ceiling of every reuse and real-time row."""
    out = {}
    for lag in lags:
        d = [dice(m, prev) for i, masks in fresh_masks.items() if i - lag in fresh_masks
             for m, prev in zip(masks, fresh_masks[i - lag])]
        if d:
            out[str(lag)] = {"mean": float(np.mean(d)), "min": float(np.min(d)),
                             "below": float(np.mean(np.asarray(d) < bound)), "pairs": len(d)}
    return out


def dice_vs(results, fresh_by_index: dict, only_reused: bool, position: Callable[[int], int] | None = None) -> list[float]:
    """Dice of each mask against the fresh mask of its frame (of its clip position, where
    `position` maps a looped run's frame index to one)."""
    def key(r):
        return position(r.frame.index) if position else r.frame.index

    return [dice(r.masks[i], fresh_by_index[key(r)].masks[i]) for r in results
            if key(r) in fresh_by_index and not (only_reused and r.fresh) for i in range(len(r.masks))]


class Replay(Backend):
    """The stream backend, except that what it computed once it hands back: encoding a
    frame already encoded returns the embedding computed then (looked up by the
    preprocessed tensor's digest), and decoding the same tokens on the same embedding
    returns the same logits. A curve of reuse policies then costs only the decoder calls
    no earlier pass made (those on motion-mapped prompts). Host-array backends only
    (embedding_slots None), whose embeddings stay valid while held."""

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.name, self.device, self.precision = backend.name, backend.device, backend.precision
        self.embeddings: dict[bytes, object] = {}
        self._decoded: dict[tuple, tuple] = {}

    def encode(self, image: np.ndarray):
        key = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()
        if key not in self.embeddings:
            self.embeddings[key] = self.inner.encode(image)
        return self.embeddings[key]

    def decode(self, embedding, coords, labels):
        # The embeddings live as long as this object, so their ids name them.
        key = (id(embedding), coords.tobytes(), coords.shape, labels.tobytes())
        if key not in self._decoded:
            self._decoded[key] = self.inner.decode(embedding, coords, labels)
        return self._decoded[key]

    def describe(self) -> dict:
        return self.inner.describe()


def _timed(stream) -> tuple[list, float]:
    t0 = time.perf_counter()
    results = list(stream)
    return results, time.perf_counter() - t0


def _median(results, key: str) -> float | None:
    v = [r.latency_ms[key] for r in results if key in r.latency_ms]
    return round(float(np.median(v)), 3) if v else None


def _row(mode: str, results: list, seconds: float | None, fresh: dict, position=None, **extra) -> dict:
    n = max(1, len(results))
    every = dice_vs(results, fresh, only_reused=False, position=position)
    reused = dice_vs(results, fresh, only_reused=True, position=position)
    moved = [r for r in results if r.motion and r.motion.get("applied") and not r.motion.get("still")]
    refused = [r for r in results if r.motion and not r.motion.get("applied")]
    return {"mode": mode, "frames": len(results), "seconds": None if seconds is None else round(seconds, 3),
            "fps": len(results) / seconds if seconds else None,
            "reuse_rate": sum(not r.fresh for r in results) / n,
            "dice_mean": float(np.mean(every)) if every else 1.0, "dice_min": float(np.min(every)) if every else 1.0,
            "dice_reused_mean": float(np.mean(reused)) if reused else None, "dice_count": len(every),
            "motion_applied": len(moved), "motion_refused": len(refused),
            "staleness_mean": float(np.mean([r.staleness for r in results])) if results else None,
            "decode_ms_p50": _median(results, "decode"), "motion_ms_p50": _median(results, "motion"),
            "reuse_check_ms_p50": _median(results, "reuse_check"),
            **latency_rows(results), **extra,
            "samples": [{"index": r.frame.index, "reuse": r.reuse, "staleness": r.staleness,
                         **({"motion": r.motion} if r.motion else {}),
                         **{k: round(v, 2) for k, v in r.latency_ms.items()}} for r in results]}


def measure(predictor: Predictor, clip: str, boxes, n_frames: int = 150, thresholds=THRESHOLDS,
            max_consecutive: int | None = None, realtime: bool = True,
            realtime_predictor: Predictor | None = None, curve: bool = True,
            realtime_seconds: float | None = None, deterministic_rows: bool = True) -> dict:
    """The rows and the curve of the module docstring for one clip and its boxes.

    realtime_predictor: the one opened for real-time mode (its threads split between encoder
    and decoder); `predictor` if not given.
    realtime_seconds: play the clip forward and backward for this long in the real-time
    rows. A clip of a few seconds is over before real-time mode's start-up (the first
    encode) is, so its rows would measure that, not the steady state; played back and
    forth it has no cut at the loop (a cut would be judged instead of the motion).
    deterministic_rows: False leaves out the deterministic reuse-on rows (the reuse-off
    pass stays: it is the fresh reference).
    """
    with open_source(clip) as src:
        fps = src.fps or 30.0
        frames = np.asarray([f.image for f in islice(src, n_frames)])
    prompts = np.asarray(boxes, np.float32).reshape(-1, 4)
    default = ReusePolicy() if max_consecutive is None else ReusePolicy(max_consecutive=max_consecutive)
    replay = Replay(predictor.backend) if predictor.backend.embedding_slots is None else None

    def deterministic(policy, backend=None):
        # Another backend (the replaying one) through the public API: a Predictor over it.
        over = predictor if backend is None else Predictor(predictor.model_dir, backend=backend)
        return over.stream(ArraySource(frames, fps=fps), prompts=prompts, reuse=policy, realtime=False)

    # The reference goes through the replaying backend, so the curve finds its embeddings.
    res, t = _timed(deterministic(ReusePolicy.off(), replay))
    fresh = {r.frame.index: r for r in res}
    rows = [_row("reuse off", res, t, fresh, dropped=0, encoded=len(res))]
    stability = reference_stability({i: r.masks for i, r in fresh.items()})
    for motion in (True, False) if deterministic_rows else ():
        res, t = _timed(deterministic(replace(default, motion=motion)))
        rows.append(_row(f"deterministic, reuse on, motion {'on' if motion else 'off'}", res, t, fresh, dropped=0,
                         encoded=sum(r.fresh for r in res), policy=_policy_json(replace(default, motion=motion))))
    points = []
    if curve:
        for motion in (True, False):
            for th in thresholds:
                policy = replace(default, threshold=th, motion=motion)
                res, _ = _timed(deterministic(policy, replay))
                row = _row(f"threshold {th}, motion {'on' if motion else 'off'}", res, None, fresh)
                points.append({k: row[k] for k in ("mode", "reuse_rate", "dice_mean", "dice_min", "dice_reused_mean",
                                                   "motion_applied", "motion_refused")}
                              | {"threshold": th, "motion": motion})
    if realtime:
        live = realtime_predictor or predictor
        looped = realtime_seconds is not None
        count = max(1, round(realtime_seconds * fps)) if looped else None
        played = np.concatenate([frames, frames[-2:0:-1]]) if looped else frames
        for motion in (True, False):
            rt = live.stream(ArraySource(played, fps=fps, loop=looped), prompts=prompts, realtime=True, pace=True,
                             motion=motion, max_frames=count)
            res, t = _timed(rt)
            what = f", {count} frames back and forth" if looped else ""
            rows.append(_row(f"real-time at {fps:g} fps{what}, motion {'on' if motion else 'off'}", res, t, fresh,
                             position=bounce(len(frames)) if looped else None,
                             dropped=rt.stats.dropped + rt.stats.passed, encoded=rt.stats.encoded))
    return {"clip": str(clip), "frames": len(frames), "clip_fps": fps, "boxes": np.asarray(boxes).tolist(),
            "model": predictor.model_dir.model_id, "backend": predictor.backend.name,
            "default_policy": _policy_json(default), "rows": rows, "curve": points,
            "reference_stability": stability, "fresh_masks": fresh}


def _policy_json(p: ReusePolicy) -> dict:
    return {"threshold": p.threshold, "scene_threshold": p.scene_threshold, "max_consecutive": p.max_consecutive,
            "cache_size": p.cache_size, "margin": p.margin, "motion": p.motion}


def markdown(result: dict) -> str:
    """One clip's rows and curve as Markdown tables."""
    out = [f"{Path(result['clip']).name}: {result['frames']} frames at {result['clip_fps']:g} fps, boxes "
           f"{result['boxes']}, {result['model']} on {result['backend']}", "",
           "| mode | masks/s | reuse rate | encoded | dropped | staleness mean | Dice vs fresh, all frames mean / min "
           "| reused mean | motion applied / refused | decode / motion ms p50 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fps = "-" if r["fps"] is None else f"{r['fps']:.2f}"
        reused = "-" if r["dice_reused_mean"] is None else f"{r['dice_reused_mean']:.4f}"
        out.append(f"| {r['mode']} | {fps} | {r['reuse_rate']:.2f} | {r.get('encoded', '-')} | {r.get('dropped', 0)} "
                   f"| {number(r['staleness_mean'], 1)} | {r['dice_mean']:.4f} / {r['dice_min']:.4f} | {reused} "
                   f"| {r['motion_applied']} / {r['motion_refused']} | {number(r['decode_ms_p50'], 1)} / "
                   f"{number(r['motion_ms_p50'], 2)} |")
    if result.get("reference_stability"):
        out += ["", stability_line(result["reference_stability"])]
    if result.get("curve"):
        out += ["", curve_table(result)]
    return "\n".join(out)


def stability_line(stability: dict) -> str:
    """The fresh reference against itself k frames earlier: the ceiling of every row above."""
    cells = ", ".join(f"{k} frame{'s' if k != '1' else ''}: {v['mean']:.4f} (min {v['min']:.3f}, "
                      f"{v['below']:.0%} of pairs under 0.95)" for k, v in stability.items())
    return f"Fresh masks against the fresh masks k frames earlier, nothing reused (Dice mean): {cells}."


def curve_table(result: dict) -> str:
    """The Dice-vs-reuse curve: reuse rate and Dice over all frames at each threshold."""
    on = {p["threshold"]: p for p in result["curve"] if p["motion"]}
    off = {p["threshold"]: p for p in result["curve"] if not p["motion"]}
    lines = [f"Dice vs reuse, {Path(result['clip']).name} (deterministic, policy "
             f"{ {k: v for k, v in result['default_policy'].items() if k != 'threshold'} }, encoder replayed):", "",
             "| threshold | motion on: reuse / Dice all mean / min | motion off: reuse / Dice all mean / min |",
             "|---|---|---|"]
    for th in sorted(set(on) | set(off)):
        lines.append(f"| {th} | {_point(on.get(th))} | {_point(off.get(th))} |")
    return "\n".join(lines)


def _point(p: dict | None) -> str:
    return "-" if p is None else f"{p['reuse_rate']:.2f} / {p['dice_mean']:.4f} / {p['dice_min']:.4f}"


def main(argv=None) -> int:
    from medsam_edge.bench.frames import parse_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("clips", nargs="*", metavar="CLIP@x0,y0,x1,y1", help="clips with their box")
    ap.add_argument("--shared", type=Path, metavar="DATA", help="every shared moving clip under DATA, with its box")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--thresholds", default=",".join(str(t) for t in THRESHOLDS))
    ap.add_argument("--max-consecutive", type=int)
    ap.add_argument("--no-curve", action="store_true", help="skip the Dice-vs-reuse curve")
    ap.add_argument("--realtime-seconds", type=float, metavar="S",
                    help="play each clip back and forth for S seconds in the real-time rows (default: the clip "
                         "once, which on a short clip measures mostly the start-up)")
    ap.add_argument("--realtime-only", action="store_true",
                    help="the fresh reference and the real-time rows only (no deterministic reuse-on rows, no curve)")
    ap.add_argument("--backend", default="onnxruntime-cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    specs = list(args.clips) + (shared_specs(args.shared) if args.shared else [])
    if not specs:
        ap.error("give clips (CLIP@x0,y0,x1,y1) and/or --shared DATA")
    pred = Predictor(args.model_dir, backend=args.backend)
    live = Predictor(args.model_dir, backend=args.backend, realtime=True)
    results = []
    for spec in specs:
        clip, boxes = parse_spec(spec)
        if boxes is None:
            ap.error(f"{spec}: give the clip's box as CLIP@x0,y0,x1,y1")
        t0 = time.perf_counter()
        result = measure(pred, clip, boxes, args.frames, [float(x) for x in args.thresholds.split(",")],
                         args.max_consecutive, realtime_predictor=live,
                         curve=not (args.no_curve or args.realtime_only), realtime_seconds=args.realtime_seconds,
                         deterministic_rows=not args.realtime_only)
        result.pop("fresh_masks")
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        print(markdown(result) + "\n", flush=True)
        if args.out:
            write_json(args.out, {"clips": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
