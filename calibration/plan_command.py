"""`medsam-edge plan`: the precision plan and predicted GPU latency of every ONNX file in a model directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="share of FLOPs per arithmetic type under TensorRT strong typing, and predicted GPU latency",
        description=(
            "For every ONNX file in MODEL_DIR: the counted FLOPs (Conv/MatMul/Gemm/Einsum) per arithmetic type "
            "(INT8, FP16, FP32) as TensorRT's strong typing will run them, read from the file, and a latency "
            "predicted from published dense peak rates and a stated efficiency. Static: no GPU needed."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="directory written by `medsam-edge export`")
    p.add_argument("--gpu", default="A100,H100,Orin", help="comma-separated GPUs to predict for (default all)")
    p.add_argument("--prompts", type=int, default=None, help="decoder prompts per call (default the contract's opt: 1)")
    p.add_argument("--points", type=int, default=None, help="decoder tokens per prompt (default the contract's opt: 2)")
    p.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from medsam_edge.calibration.plan import EFFICIENCY, GPUS, TYPES, model_dir_plan
    from medsam_edge.errors import InputError
    from medsam_edge.manifest import load_model_dir

    md = load_model_dir(args.model_dir)
    gpus = [g.strip() for g in args.gpu.split(",") if g.strip()]
    bad = [g for g in gpus if g not in GPUS]
    if bad or not gpus:
        raise InputError(f"--gpu {args.gpu!r}: expected a comma-separated list of {', '.join(GPUS)}")
    dims = {k: v for k, v in (("num_prompts", args.prompts), ("num_points", args.points)) if v is not None}
    if any(v < 1 for v in dims.values()):
        raise InputError(f"--prompts/--points {dims}: expected 1 or more")
    plans = model_dir_plan(md.path, gpus, dims)
    if args.json:
        print(json.dumps(plans, indent=2))
        return 0
    for name, p in plans.items():
        shares = "  ".join(f"{t} {100 * p['share'][t]:5.1f}%" for t in TYPES if t != "BF16" or p["flops"][t])
        lat = "  ".join(f"{g} {p['predicted'][g]['total_ms']:.3g} ms" for g in gpus)
        other = sum(p["other_ops"].values())
        print(f"{name:22s} {p['total_flops'] / 1e9:8.2f} GFLOP  {shares}   other ops {other / 1e9:.2f} G   {lat}")
        if p["uncounted_nodes"]:
            print(f"{'':22s} {len(p['uncounted_nodes'])} matrix node(s) of unknown shape not counted, "
                  f"e.g. {p['uncounted_nodes'][0]}")
    first = next(iter(plans.values()), None)
    if first is not None:
        print(f"counted: {first['counting']}; decoder at {first['dims']}")
        print(f"predicted at {EFFICIENCY['matrix']:.0%} of the dense peak per type and {EFFICIENCY['memory']:.0%} "
              f"of memory bandwidth for other ops: {'; '.join(GPUS[g].source for g in gpus)}")
    return 0
