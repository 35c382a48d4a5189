"""Command-line options shared by `run` and `view` whose values the runtime library parses.

The library modules (runtime.spacing, runtime.dicom_seg) know nothing of argparse; this
module turns their one-line InputErrors into argparse's usage errors. Standard library only
at import, so building the parsers stays cheap.
"""

from __future__ import annotations

import argparse

PIXEL_SPACING_HELP = (
    "pixel size in mm for area and diameter in mm: MM for square pixels, or ROW_MM,COL_MM "
    "(DICOM order: the distance between rows, then between columns). For video and image "
    "sources; a DICOM file's own calibration (ultrasound regions, PixelSpacing) is used without "
    "it, and overridden with it. Without any, only pixel areas are written"
)
DICOM_SEG_HELP = (
    "for a DICOM source: also write segmentation.dcm, a DICOM Segmentation (one segment per prompt, each "
    "frame referencing its source frame) for PACS and viewers. PRIVACY: it carries the source's patient "
    "and study identifiers (name, ID, birth date, accession number, UIDs), as the standard requires: "
    "handle it like the source file"
)


def add_pixel_spacing(parser: argparse.ArgumentParser) -> None:
    """`--pixel-spacing` (value: a runtime.spacing.PixelSize, or None)."""
    parser.add_argument("--pixel-spacing", type=_pixel_spacing, metavar="MM[,MM]", help=PIXEL_SPACING_HELP)


def add_dicom_seg(parser: argparse.ArgumentParser) -> None:
    """`--dicom-seg` (runtime.dicom_seg.dicom_seg_sink makes the sink)."""
    parser.add_argument("--dicom-seg", action="store_true", help=DICOM_SEG_HELP)


def _pixel_spacing(text: str):
    from medsam_edge.errors import InputError
    from medsam_edge.runtime.spacing import parse_pixel_spacing

    try:
        return parse_pixel_spacing(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
