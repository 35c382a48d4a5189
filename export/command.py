"""`medsam-edge export`: the command line of export.exporter.export_model."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsam_edge.contract import USER_MODELS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (encoder, decoder, manifest) and check parity",
        description=(
            "Export a MedSAM/LiteMedSAM/SAM checkpoint to a model directory: encoder.onnx, decoder.onnx "
            "(point prompts: boxes and clicks, mask token 0) and manifest.json. Parity against the PyTorch reference is measured "
            "with onnxruntime on the CPU; the export fails, writing nothing, if it is off."
        ),
    )
    p.add_argument("--model", required=True, help=f"model id: {', '.join(USER_MODELS)}")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="checkpoint file (lite_medsam defaults to the bundled weights)")
    src.add_argument("--random-init", action="store_true", help="random weights in the checkpoint format (tests)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--save-checkpoint", type=Path, help="with --random-init: also keep the random checkpoint here")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--skip-parity", action="store_true", help="do not run the parity check (not recommended)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medsam_edge import extras
    from medsam_edge.atomic import check_output

    check_output(args.out, "--out", overwrite=args.overwrite)
    extras.require("export")
    from medsam_edge.export.exporter import export_model

    export_model(
        args.model,
        args.out,
        checkpoint=args.checkpoint,
        random_init=args.random_init,
        seed=args.seed,
        save_checkpoint=args.save_checkpoint,
        overwrite=args.overwrite,
        parity=not args.skip_parity,
    )
    return 0
