"""The `medsam-edge` command: subcommands wired to their modules.

Each subcommand module adds its own parser and imports its heavy libraries only when
it runs, so `--help` and the torch-free runtime start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys

from medsam_edge import __version__
from medsam_edge import extras
from medsam_edge.errors import EXIT_INPUT, InputError

# A value that starts with a minus and is numbers: argparse takes "-50,-50,100,100" for an
# option unless its negative-number pattern (one number only) is widened to lists.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
NEGATIVE_NUMBERS = re.compile(rf"^-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:,{_NUMBER})*$")

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
    "medsam_edge.viewer.command",
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
    for command in sub.choices.values():
        # argparse's own attribute (3.10-3.13); where it is gone, `--box=-50,...` still works.
        if hasattr(command, "_negative_number_matcher"):
            command._negative_number_matcher = NEGATIVE_NUMBERS
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    try:
        return int(args.func(args) or 0)
    except extras.MissingExtra as e:
        print(f"medsam-edge {args.command}: {e}", file=sys.stderr)
        return EXIT_INPUT
    except InputError as e:
        print(f"medsam-edge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ModuleNotFoundError as e:
        # An extra's package imported deep inside a command: the same line as extras.require's.
        missing = extras.from_import_error(e)
        if missing is None:
            raise
        print(f"medsam-edge {args.command}: {missing}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as e:
        terminated = str(e) == "stopped by SIGTERM"
        print(f"medsam-edge {args.command}: {'stopped by SIGTERM' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


class _BelowCritical(logging.Filter):
    """Drops the records of the named libraries' loggers (and their children) below CRITICAL."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        return not any(record.name == n or record.name.startswith(n + ".") for n in self.names)


def quiet_libraries() -> None:
    """pydicom and highdicom log header values they find malformed, which can include
    patient names, and decoder tracebacks for frames we skip and count ourselves: our own
    messages about DICOM input never quote the header. Setting their loggers' level does
    not hold (pydicom sets its own to WARNING when it is imported, after this), so the
    filter sits on the handlers, where every record ends up whatever the logger's level.
    OpenCV's and FFmpeg's own warnings (a frame the writer could not write, a damaged
    stream) are said by our messages, once and in words."""
    quiet = _BelowCritical(("pydicom", "highdicom"))
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg first opens
    if "cv2" in sys.modules:  # imported by the parsers already: the environment is read by now
        cv2 = sys.modules["cv2"]
        # OpenCV 5 has cv2.utils.logging; OpenCV 4's wheels only cv2.setLogLevel.
        levels = getattr(getattr(cv2, "utils", None), "logging", None)
        if levels is not None:
            levels.setLogLevel(levels.LOG_LEVEL_ERROR)
        elif hasattr(cv2, "setLogLevel"):
            cv2.setLogLevel(2)  # cv::utils::logging::LOG_LEVEL_ERROR
    else:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


if __name__ == "__main__":
    sys.exit(main())
