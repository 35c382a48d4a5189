"""The `medsam-edge` command: subcommands wired to their modules.

Each subcommand module adds its own parser and imports its heavy libraries only when
it runs, so `--help` and the torch-free runtime start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medsam_edge import __version__
from medsam_edge.errors import EXIT_INPUT, InputError

# Subcommand modules, in the order `--help` lists them.
COMMANDS = (
    "medsam_edge.export.command",
    "medsam_edge.runtime.command",
    "medsam_edge.engines.command",
    "medsam_edge.calibration.command",
    "medsam_edge.serving.command",
    "medsam_edge.calibration.plan_command",
    "medsam_edge.info",
    "medsam_edge.bench.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsam-edge",
        description="MedSAM from a PyTorch checkpoint to ONNX/TensorRT, run on ultrasound and endoscopy video.",
    )
    parser.add_argument("--version", action="version", version=f"medsam-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        # Every subcommand module imports only the standard library at the top, so a
        # failure here is a broken install and must say so, not drop the subcommand.
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # pydicom logs header values it finds malformed, which can include patient names:
    # our own messages about DICOM input never quote the header.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"medsam-edge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"medsam-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
