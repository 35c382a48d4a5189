"""Frame results the sink and output tests write: a grey frame with disk-shaped masks, boxes,
scores and the timings a real answer carries, made without a model."""

from __future__ import annotations

import numpy as np

from medsam_edge.runtime.frame import Frame
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.result import FrameResult
from medsam_edge.runtime.segmenter import Encoded

H, W = 96, 128
GREY = 100


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_result(index: int, h: int = H, w: int = W, disks=((48, 40, 20),), reuse: str = "fresh",
                staleness: int = 0) -> FrameResult:
    """A grey frame with one mask and box per (cy, cx, r) in `disks`."""
    masks = np.stack([disk(h, w, cy, cx, r) for cy, cx, r in disks]) if disks else np.zeros((0, h, w), bool)
    prompts = [Prompt.of(box=[cx - r - 4, cy - r - 4, cx + r + 4, cy + r + 4]) for cy, cx, r in disks]
    frame = Frame(np.full((h, w, 3), GREY, np.uint8), index=index, timestamp=index / 10, source="synthetic")
    return FrameResult(frame=frame, prompts=prompts, masks=masks, scores=np.linspace(0.9, 0.8, len(masks)),
                       reuse=reuse, embedding=Encoded(None, (h, w), (h, w), index - staleness), staleness=staleness,
                       lost=[False] * len(masks), latency_ms={"decode": 1.5, "total": 3.25}, backend="test")
