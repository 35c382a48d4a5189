"""`medsam-edge calibrate`: FP16 and INT8 ONNX files decided on the CPU, with a fidelity report.

The precision lives in the ONNX (TensorRT 11 has no precision flags or INT8 calibrator),
so it is decided here once and every backend runs the same files.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medsam_edge.errors import InputError

from medsam_edge.contract import parse_precisions

from .backends import CPU_BACKENDS
from .int8 import MAX_TRIALS, METHODS, SEARCH_MARGIN

FRAMES_SMALL, FRAMES_LARGE = 48, 12
# The searches judge every calibration frame of a small model (a subset let an exclusion
# pass that missed on the rest), 12 of a big one's (docs/decisions.md#calibration-frames).
SEARCH_FRAMES_LARGE = 12


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="write FP16 and INT8 ONNX files calibrated on real frames, with a fidelity report",
        description=(
            "Sample real frames from video, DICOM or image folders; write encoder.fp16.onnx and "
            "decoder.fp16.onnx (FP32 I/O, fragile nodes FP32 by measurement), encoder.int8.onnx (Q/DQ for "
            "TensorRT, sensitive nodes left float until mask Dice holds) and the CPU-only "
            "encoder.int8dyn.onnx; measure them on held-out frames and write fidelity.json/.md."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a directory written by `medsam-edge export`")
    p.add_argument("--frames", nargs="+", required=True, metavar="SOURCE",
                   help="videos, DICOM files, image folders or images to sample calibration frames from")
    p.add_argument("--eval", nargs="+", default=[], metavar="SOURCE",
                   help="sources used only for the report (e.g. annotated images), never for calibration")
    p.add_argument("--precision", default="fp16,int8",
                   help="comma-separated: fp16, int8 (default both); the report also scores int8dyn and, where a "
                        "CPU backend here runs it, bf16 (the FP32 files at BF16), on every CPU backend that runs each")
    p.add_argument("--method", default="percentile", choices=("auto",) + METHODS,
                   help="INT8 calibration method (default percentile: it won the three-way comparisons on LiteMedSAM "
                        "so far); auto compares all three and keeps the best, at twice the range sweep's "
                        "time (each histogram method is a pass of np.histogram over every tensor of every frame)")
    p.add_argument("--frames-count", type=int, metavar="N",
                   help="frames to sample from --frames, spread over sources and time (default "
                        f"{FRAMES_SMALL} for LiteMedSAM-sized inputs, {FRAMES_LARGE} for ViT-B, whose INT8 ranges "
                        "take about 3 min per frame on 2 cores)")
    p.add_argument("--eval-count", type=int, default=64, metavar="N", help="frames at most from --eval (default 64)")
    p.add_argument("--holdout", type=float, default=0.25, help="share of --frames held out for the report (0.25)")
    p.add_argument("--boxes", nargs="+", default=[], metavar="JSON",
                   help='box prompts: {"frame name": [[x0, y0, x1, y1], ...]} or Kvasir-SEG bboxes.json')
    p.add_argument("--masks", nargs="+", default=[], metavar="DIR",
                   help="ground-truth mask folders (same file names as the images): boxes and truth")
    p.add_argument("--checkpoint", type=Path, help="the exported checkpoint, for the PyTorch reference")
    p.add_argument("--no-dynamic", action="store_true", help="skip the CPU-only encoder.int8dyn.onnx")
    p.add_argument("--search-frames", type=int, metavar="N",
                   help=f"calibration frames the searches judge on (default: every one for inputs up to 256 px, "
                        f"{SEARCH_FRAMES_LARGE} for bigger ones, where each frame costs seconds a trial)")
    p.add_argument("--max-trials", type=int, default=MAX_TRIALS,
                   help=f"INT8 sensitivity trials at most ({MAX_TRIALS})")
    p.add_argument("--search-margin", type=float, default=SEARCH_MARGIN, metavar="SHARE",
                   help="share of the INT8 target's allowed Dice loss the INT8 searches may use on calibration "
                        f"frames (default {SEARCH_MARGIN}): unseen sources lose more than the frames the "
                        "search judged on; 1 judges the search by the report's own target")
    p.add_argument("--search-backends", default=",".join(CPU_BACKENDS), metavar="LIST",
                   help="CPU backends whose arithmetic the INT8 searches judge each candidate on, onnxruntime-cpu "
                        f"first (default: {','.join(CPU_BACKENDS)}, each where it runs the file here). On a CPU "
                        "without VNNI OpenVINO's INT8 loses more than TensorRT's would: for a file meant only for "
                        "TensorRT, 'onnxruntime-cpu' keeps more INT8 (the report still scores every backend)")
    p.add_argument("--cache-dir", type=Path, help="where sampled frames are cached (default ~/.cache/medsam-edge)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no table")
    p.set_defaults(func=run)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medsam-edge" / "frames"


def run(args: argparse.Namespace) -> int:
    from medsam_edge.manifest import load_model_dir

    from .run import MADE_HERE, FrameOptions, Options, SearchOptions, calibrate

    precisions = parse_precisions(args.precision, MADE_HERE)
    if not 0.0 < args.search_margin <= 1.0:
        raise InputError(f"--search-margin {args.search_margin}: must be in (0, 1]; {SEARCH_MARGIN} is the default")
    for name in ("frames_count", "search_frames", "max_trials"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    backends = tuple(b.strip() for b in args.search_backends.split(",") if b.strip())
    unknown = [b for b in backends if b not in CPU_BACKENDS]
    if unknown or not backends or backends[0] != "onnxruntime-cpu":
        raise InputError(f"--search-backends {args.search_backends}: give onnxruntime-cpu first, then any of "
                         f"{', '.join(CPU_BACKENDS[1:])} (e.g. {','.join(CPU_BACKENDS)})")
    md = load_model_dir(args.model_dir)
    small = md.preprocess.size <= 256
    count = args.frames_count or (FRAMES_SMALL if small else FRAMES_LARGE)
    search_frames = args.search_frames or (count if small else SEARCH_FRAMES_LARGE)
    opts = Options(
        precisions=precisions,
        frames=FrameOptions(count=count, holdout=args.holdout, eval_sources=tuple(args.eval),
                            eval_count=args.eval_count, box_files=tuple(args.boxes), mask_dirs=tuple(args.masks),
                            cache_dir=str(args.cache_dir or default_cache_dir())),
        search=SearchOptions(methods=METHODS if args.method == "auto" else (args.method,),
                             search_frames=search_frames, max_trials=args.max_trials,
                             margin=args.search_margin, backends=backends),
        dynamic=not args.no_dynamic,
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        threads=args.threads,
        quiet=args.quiet,
    )
    calibrate(md, list(args.frames), opts)
    return 0
