"""The standard benchmark scenarios, then BENCHMARKS.md from their reports.

    python -m medsam_edge.bench.standard --lite models/lite_medsam --vitb models/medsam_vit_b --quick

1. LiteMedSAM: every backend against the reference on real ultrasound and endoscopy
   frames, run `--repeat` times (default 2) so BENCHMARKS.md can show whether two runs
   of the same command agree within their spread.
2. LiteMedSAM streaming: reuse off / on / real-time on busi_sweep.mp4 and
   echo_apical_loop.mp4; a long real-time run looping the echo clip.
3. LiteMedSAM against ground truth (bench/truth_run.py; --no-truth skips it): clips with
   known motion, tracking on annotated endoscopy, 2,000-frame real-time rows.
4. ViT-B (MedSAM): every backend against the reference on a few real frames, also
   `--repeat` times.
5. BENCHMARKS.md, written by bench/benchmarks_md.py from the reports.

Each scenario is its own `medsam-edge bench` process, so peak memory is per model.
Duration on the 2-core development CPU, measured (2026-11-23): --quick about 10.5 min
(LiteMedSAM rows 67-73 s a run; streams and the 2,000-frame long run 199 s; ViT-B rows
with FP32, Q/DQ INT8 and dynamic INT8 146-151 s a run). A full run is estimated at about
45 min from the reports' `estimate_full_s` (LiteMedSAM rows 9-10 min a run, streams 6 min,
ViT-B rows 10 min a run). The ground-truth step adds about 6-7 min to --quick and 25 min to a
full run (estimates for an idle machine: bench/truth_run.py). `--quick --long-frames 2000
--every-clip --repeat 1` with ViT-B took 24.4 min (2026-12-06, Xeon with AMX; the ground-truth
step 16 min: nine shared clips and four ground-truth rows of 2,000 frames in real time).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

VIDEO = "ultrasound/video"
# Boxes around the object in each clip (the lesion in busi_sweep, a chamber in the echo cine).
BUSI = f"{VIDEO}/busi_sweep.mp4@100,160,240,300"
ECHO = f"{VIDEO}/echo_apical_loop.mp4@160,60,210,125"
LONG_FRAMES = 2000
ENDO = "endoscopy/video/lap_cholec80_VID25_324_and_VID43_743_a.mp4"


def scenarios(args) -> list[tuple[str, list[str]]]:
    d = lambda spec: str(args.data / spec)  # noqa: E731
    quick = ["--quick"] if args.quick else []
    out = []
    runs = range(1, max(1, args.repeat) + 1)
    if args.lite:
        for k in runs:
            out.append((f"lite_run{k}", ["bench", str(args.lite), "--frames", d(BUSI), d(ECHO), d(ENDO), *quick,
                                         "--out", str(args.out / f"lite_run{k}")]))
        out.append(("lite_stream", ["bench", str(args.lite), *quick, "--stream", d(BUSI), "--stream", d(ECHO),
                                    "--long-run", d(ECHO), "--long-frames", str(args.long_frames or LONG_FRAMES),
                                    "--out", str(args.out / "lite_stream")]))
        if args.truth:
            # --quick keeps truth_run's own 300-frame real-time rows (seven 2,000-frame rows take
            # minutes) unless --long-frames is given.
            frames = args.long_frames or (None if args.quick else LONG_FRAMES)
            longer = ["--long-frames", str(frames)] if frames else []
            every = ["--every-clip"] if args.every_clip else []
            out.append(("truth", ["-m", "medsam_edge.bench.truth_run", str(args.lite), "--data", str(args.data),
                                  *quick, *longer, *every, "--out", str(args.out / "truth")]))
    if args.vitb:
        for k in runs:
            out.append((f"vitb_run{k}", ["bench", str(args.vitb), "--frames", d(BUSI), d(ECHO), *quick,
                                         "--out", str(args.out / f"vitb_run{k}")]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lite", type=Path, help="LiteMedSAM model directory")
    ap.add_argument("--vitb", type=Path, help="MedSAM ViT-B model directory")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data (default ../shared/data)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--long-frames", type=int,
                    help=f"frames of each long real-time run (default {LONG_FRAMES}; the ground-truth step's "
                         "real-time rows take it too, with --quick only when given)")
    ap.add_argument("--every-clip", action="store_true",
                    help="the ground-truth step's real-time rows on every shared moving clip, also with --quick "
                         "(a full run has them anyway)")
    ap.add_argument("--no-truth", dest="truth", action="store_false",
                    help="skip the ground-truth step (bench/truth_run.py)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each comparison command (default 2)")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"))
    args = ap.parse_args(argv)
    if not args.lite and not args.vitb:
        ap.error("give --lite and/or --vitb model directories")
    reports = []
    for name, cmd in scenarios(args):
        # The ground-truth step is its own module; the others are `medsam-edge` commands.
        full = [sys.executable, *cmd] if cmd[0] == "-m" else [sys.executable, "-m", "medsam_edge.cli", *cmd]
        print(f"== {name}: {shlex.join(['python', *cmd] if cmd[0] == '-m' else ['medsam-edge', *cmd])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(full)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        report = args.out / name / "report.json"
        if report.is_file():
            reports.append(str(report))
    if not reports:
        return 2
    return subprocess.call([sys.executable, "-m", "medsam_edge.bench.benchmarks_md", *reports,
                            "--out", str(args.benchmarks)])


if __name__ == "__main__":
    sys.exit(main())
