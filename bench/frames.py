"""The frames and boxes every row sees: read once, with how long each read took.

A source spec is anything `open_source` accepts, optionally followed by `@x0,y0,x1,y1`
for the box prompt on its frames (a clip's object of interest). Without a box the
centre half of each frame is the prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from itertools import islice

import numpy as np

from medsam_edge.runtime.geometry import centre_box

from medsam_edge.errors import InputError

_BOX_SUFFIX = re.compile(r"^(?P<src>.+)@(?P<box>[-+0-9.eE]+(?:,[-+0-9.eE]+){3})$")
# Enough to spread the sample across a clip without decoding a long video to the end.
MAX_SCAN = 600


@dataclass
class BenchFrame:
    image: np.ndarray  # HxWx3 uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 in frame pixels
    source: str
    index: int
    read_ms: float


def parse_spec(spec: str) -> tuple[str, np.ndarray | None]:
    """'clip.mp4@100,160,240,300' -> ('clip.mp4', [[100,160,240,300]]); a bare spec -> (spec, None)."""
    from medsam_edge.runtime.prompts import parse_box

    m = _BOX_SUFFIX.match(spec)
    if not m:
        return spec, None
    return m["src"], np.asarray([parse_box(m["box"])], np.float32)


def load(specs: list[str], total: int) -> list[BenchFrame]:
    """About `total` frames spread evenly over each source, in source order."""
    from medsam_edge.runtime.prompts import validate_boxes

    if not specs:
        raise InputError("no frames: give --frames SOURCE (a video, DICOM, image or folder of images)")
    per_source = _split(total, len(specs))
    out: list[BenchFrame] = []
    for spec, want in zip(specs, per_source):
        path, boxes = parse_spec(spec)
        for frame, ms in _read_spread(path, want):
            b = centre_box(frame.height, frame.width)[None] if boxes is None else boxes
            b = validate_boxes(b, frame.height, frame.width, f"{path} frame {frame.index} box")
            out.append(BenchFrame(frame.image, b, path, frame.index, ms))
    return out


def _read_spread(path: str, want: int) -> list:
    """(frame, read ms) for `want` frames spread over the source; read time is what next() took.

    Only the chosen frames are kept: a long endoscopy video would not fit in memory.
    """
    from medsam_edge.runtime.sources import open_source

    with open_source(path) as src:
        # Without a known length, the first frames are the sample.
        n = min(src.frame_count or want, MAX_SCAN)
        keep = set(_spread(n, want))
        it = iter(islice(src, n))
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            frame = next(it, None)
            ms = (time.perf_counter() - t0) * 1e3
            if frame is None:
                break
            if i in keep:
                out.append((frame, ms))
    if not out:
        raise InputError(f"{path}: no frames to benchmark")
    return out


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(max(total, parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _spread(n: int, want: int) -> list[int]:
    if want >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, want)})
