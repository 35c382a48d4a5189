"""The ground-truth benchmark: Dice against the truth on clips with known motion
(bench/truth.py), tracking on real annotated video (bench/tracking.py) and long real-time
rows (bench/realtime_rows.py), in one report that bench/truth_md.py renders.

    python -m medsam_edge.bench.truth_run models/lite_medsam --data ../shared/data --out out/bench/truth [--quick]

--quick: one BUSI and one Kvasir clip of 60 frames and 300-frame real-time rows on the three
standard clips; otherwise two of each of 150 frames and 2,000-frame real-time rows
(--long-frames) on every shared moving clip (--every-clip / --standard-clips choose).

Duration, LiteMedSAM onnxruntime FP32, 2 cores: --quick took 28 min on a machine loaded
by other jobs (load average 10-15; fresh frames 0.2-0.3 masks/s), estimated 6-7 min idle at
about 0.8 s a fresh frame; a full run is estimated at about 25 min idle (the ground-truth
clips 4 x ~3 min: "deterministic reuse" encodes about a quarter of the frames that "fresh every
frame" does; tracking 1.5 min). Real-time rows take about 70 s each at 2,000 frames: nine shared
clips and four ground-truth rows, 14.6 min (measured 2026-12-05, LiteMedSAM BF16 plan).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from medsam_edge.atomic import write_json
from medsam_edge.errors import InputError


def measure(predictor, data: Path, per_set: int, clip_frames: int, long_frames: int, parts=("truth", "tracking",
            "realtime"), say=lambda s: None, every_clip: bool = False) -> dict:
    from medsam_edge.bench import realtime_rows, tracking, truth
    from medsam_edge.bench.clips import shared_clips

    clips = shared_clips(data, per_set, clip_frames)
    out: dict = {"truth_clips": [], "tracking": [], "realtime_rows": []}
    if "truth" in parts:
        out["truth_clips"] = [truth.clip_rows(predictor, c, say=say) for c in clips]
    if "tracking" in parts:
        out["tracking"] = tracking.run(predictor, data, say=say)
    if "realtime" in parts:
        out["realtime_rows"] = realtime_rows.run(predictor, data, clips, long_frames, say=say, every=every_clip)
    return out


def main(argv: list[str] | None = None) -> int:
    from medsam_edge.bench.machine import cpu_clock, describe, end_of_run
    from medsam_edge.runtime import Predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("out/bench/truth"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", help="as `run --precision` (default: the Predictor's)")
    ap.add_argument("--per-set", type=int, help="ground-truth clips per image set (default 1 quick, 2 full)")
    ap.add_argument("--clip-frames", type=int, help="frames per ground-truth clip (default 60 quick, 150 full)")
    ap.add_argument("--long-frames", type=int, help="frames per real-time row (default 300 quick, 2000 full)")
    ap.add_argument("--only", nargs="+", choices=("truth", "tracking", "realtime"), default=["truth", "tracking",
                                                                                           "realtime"])
    clips = ap.add_mutually_exclusive_group()
    clips.add_argument("--every-clip", dest="every_clip", action="store_true", default=None,
                       help="real-time rows on every shared moving clip (the default of a full run)")
    clips.add_argument("--standard-clips", dest="every_clip", action="store_false",
                       help="real-time rows on the standard three clips only (the default with --quick)")
    args = ap.parse_args(argv)
    every_clip = (not args.quick) if args.every_clip is None else args.every_clip
    if not args.data.is_dir():
        print(f"truth_run: {args.data}: no such data directory; give --data ../shared/data", file=sys.stderr)
        return 2
    per_set = args.per_set or (1 if args.quick else 2)
    clip_frames = args.clip_frames or (60 if args.quick else 150)
    long_frames = args.long_frames or (300 if args.quick else 2000)
    machine = describe()
    t0 = time.perf_counter()
    clock = cpu_clock()
    options = {"backend": args.backend, **({"precision": args.precision} if args.precision else {})}
    try:
        with Predictor(args.model_dir, **options) as p:
            backend = p.backend.describe() if hasattr(p.backend, "describe") else p.backend.name
            result = measure(p, args.data, per_set, clip_frames, long_frames, tuple(args.only),
                             say=lambda s: print(s, file=sys.stderr, flush=True), every_clip=every_clip)
            model_id = p.model_dir.model_id
    except InputError as e:
        print(f"truth_run: {e}", file=sys.stderr)
        return 2
    report = {"kind": "truth", "model": {"model_id": model_id, "model_dir": str(args.model_dir)},
              "backend": backend if isinstance(backend, (str, dict)) else str(backend),
              "settings": {"mode": "truth quick" if args.quick else "truth", "per_set": per_set,
                           "clip_frames": clip_frames, "long_frames": long_frames, "parts": list(args.only),
                           "every_clip": every_clip},
              "command": shlex.join(["python", "-m", "medsam_edge.bench.truth_run", *(argv or sys.argv[1:])]),
              "out": str(args.out), "machine": machine, **result, "status": "ok",
              "wall_s": round(time.perf_counter() - t0, 1), **end_of_run(clock)}
    write_json(args.out / "report.json", report)
    from medsam_edge.bench.truth_md import render

    print(render(report, heading="##"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
