"""`medsam-edge build`: TensorRT engines for this GPU from a model directory's ONNX files."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsam_edge.contract import POINTS_MAX, DECODER_BATCH_MAX


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build TensorRT engines (strongly typed, TensorRT 10/11) for this GPU",
        description=(
            "Build encoder.<precision>.plan and decoder.<precision>.plan from the model directory's ONNX "
            "files into engines/<gpu>_sm<cc>_trt<version>/, with a manifest and a timing cache. Precision "
            "comes from the ONNX: fp16 and int8 need `medsam-edge calibrate` first."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="directory written by `medsam-edge export`")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, fp16, int8 (default fp32)")
    p.add_argument("--workspace", type=float, default=4.0, metavar="GIB", help="builder workspace limit (default 4)")
    p.add_argument("--max-prompts", type=int, default=DECODER_BATCH_MAX,
                   help=f"most prompts (objects) per decoder call; more run in chunks (default {DECODER_BATCH_MAX})")
    p.add_argument("--max-points", type=int, default=POINTS_MAX,
                   help=f"most tokens per prompt: clicks + 2 for a box, or + 1 padding (default {POINTS_MAX})")
    p.add_argument("--opt-prompts", type=int, default=None,
                   help="prompts per call TensorRT tunes the decoder for (default 1: one box per frame)")
    p.add_argument("--opt-points", type=int, default=None,
                   help="tokens per prompt TensorRT tunes the decoder for (default 2: a box's two corners)")
    p.add_argument("--no-timing-cache", action="store_true", help="neither read nor write the timing cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medsam_edge.contract import parse_precisions
    from medsam_edge.engines import engine_manifest as em
    from medsam_edge.engines.tensorrt_status import usable
    from medsam_edge.engines.trt_build import build_engines
    from medsam_edge.engines.trt_check import check_build_inputs
    from medsam_edge.errors import InputError
    from medsam_edge.manifest import load_model_dir

    # The user's own mistakes in what was typed first: they are wrong on any machine. Then
    # TensorRT, before asking for files: a missing fp16/int8 encoder means a calibration of
    # minutes, which is no use on a machine that cannot build at all.
    md = load_model_dir(args.model_dir)
    precisions = parse_precisions(args.precision, em.PRECISIONS)
    shapes = em.profiles(md, args.max_prompts, args.max_points, args.opt_prompts, args.opt_points)
    # A file that is there and that TensorRT's parser or builder would refuse is wrong on
    # any machine: said before TensorRT is asked for.
    present = [p for p in precisions if all(_has(md, part, p) for part in em.PARTS)]
    check_build_inputs(md, present, shapes)
    ok, why = usable()
    if not ok:
        raise InputError(
            f"TensorRT is not usable here: {why}; build on the GPU machine that will run the engines, "
            "or run with --backend onnxruntime-cuda/onnxruntime-cpu"
        )
    for p in precisions:
        em.onnx_for(md, "encoder", p)  # a missing one: the one-line "run medsam-edge calibrate"
    out = build_engines(md, precisions, args.workspace, args.max_prompts, args.max_points,
                        timing_cache=not args.no_timing_cache, opt_prompts=args.opt_prompts,
                        opt_points=args.opt_points, check=False)
    print(f"wrote {out}")
    return 0


def _has(md, part: str, precision: str) -> bool:
    from medsam_edge.engines import engine_manifest as em
    from medsam_edge.errors import InputError

    try:
        em.onnx_for(md, part, precision)
        return True
    except InputError:
        return False
