"""`medsam-edge bench`: every backend against the PyTorch reference, in one process.

medsam_edge.bench ships with the package (its extra dependencies: the `bench` extra for
memory and plots, the `export` extra for the PyTorch reference), so a user measures on
their own cart from a wheel exactly what the repository's BENCHMARKS.md measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medsam_edge.contract import PRECISIONS
from medsam_edge.errors import InputError

EPILOG = """\
rows: the reference (PyTorch FP32 eager, MedSAM's inference path) always runs; the others
are backend families at each precision the model directory holds (encoder.onnx,
encoder.fp16.onnx, encoder.int8.onnx, encoder.int8dyn.onnx): onnxruntime-cpu, onnxruntime-cuda, onnxruntime-trt,
tensorrt, and torch-cuda (PyTorch fast path). Give --backends as families or rows, e.g.
--backends onnxruntime-cpu or --backends onnxruntime-cpu-fp32,onnxruntime-cpu-int8.

durations measured on the 2-core development CPU (--quick): LiteMedSAM with five rows
(reference, onnxruntime FP32/FP16/INT8/INT8-dynamic; 6 frames x 2 runs) about 1.5 min,
each 60-frame --stream clip 1.5-2 min, ViT-B (2 frames x 1 run) about 1 min; a --long-run
of N frames takes N / clip fps seconds (paced: 67 s for 2,000 frames at 30 fps). The full
presets (LiteMedSAM 24 frames x 5 runs, 150-frame streams at 3 reuse thresholds; ViT-B
6 x 2) were estimated at about 18 and 4 min; each report records its own estimate.
Exit status: 0, 1 when a row failed (the others finished; see the report), 2 for bad input.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency and fidelity of every backend against the PyTorch reference",
                       description=__doc__.splitlines()[0], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="model directory written by `medsam-edge export`")
    p.add_argument("--frames", nargs="+", metavar="SOURCE",
                   help="videos, DICOMs, images or folders; SOURCE@x0,y0,x1,y1 gives the box prompt "
                        "(default: the centre half of each frame)")
    p.add_argument("--backends", action="append", metavar="NAMES",
                   help="comma-separated families or rows (default: every available one)")
    p.add_argument("--runs", type=int, help="timed repetitions of each frame per row (default by preset)")
    p.add_argument("--max-frames", type=int, help="frames in all, spread over the sources (default by preset)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per row before measuring (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads of every row, the reference's torch included "
                                               "(default: each library's own, every core)")
    p.add_argument("--quick", action="store_true", help="few frames and runs: minutes on a 2-core CPU")
    p.add_argument("--checkpoint", type=Path, help="checkpoint for the reference when the model dir came from a user file")
    p.add_argument("--stream", action="append", metavar="CLIP[@BOX]",
                   help="streaming scenario through the runtime on this clip: reuse off, reuse on, real-time")
    p.add_argument("--stream-frames", type=int, help="frames of each --stream clip (default 60 quick, 150 full)")
    p.add_argument("--stream-backend", default="onnxruntime-cpu", help="runtime backend for streaming (default onnxruntime-cpu)")
    p.add_argument("--stream-precision", default="fp32", choices=tuple(PRECISIONS))
    p.add_argument("--stream-threads", type=int, help="onnxruntime threads per session for streaming (default: all cores)")
    p.add_argument("--long-run", metavar="CLIP[@BOX]", help="loop this clip in real-time mode for --long-frames frames")
    p.add_argument("--long-frames", type=int, default=2000, help="frames of the long run (default 2000)")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="report directory (default out/bench)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("runs", "max_frames", "stream_frames", "long_frames", "stream_threads", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} {value}: expected a positive number")
    from medsam_edge import extras
    from medsam_edge.atomic import check_output

    check_output(args.out, "--out")  # before minutes of measuring, not after
    extras.require("bench", "export")  # psutil and plots; torch for the reference row every run has
    from medsam_edge.bench.run import run as bench_run

    return bench_run(args)
