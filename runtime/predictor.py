"""The Python API for embedding medsam-edge in other systems.

    from medsam_edge.runtime import Predictor
    p = Predictor("models/lite_medsam")
    p.set_image(rgb)                      # the encoder runs once
    masks, scores = p.predict([[x0, y0, x1, y1]])   # decoder only, as often as you like

    for result in p.stream("clip.mp4", boxes=[[x0, y0, x1, y1]], track=True):
        ...                               # one FrameResult per frame
"""

from __future__ import annotations

import numpy as np

from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, load_model_dir
from medsam_edge.runtime.pipeline import Stream
from medsam_edge.runtime.prompts import BoxSchedule, BoxTracker, Prompter, validate_boxes
from medsam_edge.runtime.realtime import RealtimeStream, split_threads
from medsam_edge.runtime.reuse import ReusePolicy
from medsam_edge.runtime.segmenter import Encoded, Segmenter


class Predictor:
    def __init__(self, model_dir, backend: str = "auto", precision: str = "fp32", threads: int | None = None,
                 realtime: bool = False) -> None:
        """threads: CPU threads for onnxruntime (default every core). realtime: the predictor
        will stream in real-time mode, where encoder and decoder run at once, so the threads
        are split between them (runtime.realtime.split_threads)."""
        from medsam_edge.engines.select import open_backend

        self.model_dir: ModelDir = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
        enc, dec = split_threads(threads) if realtime else (threads, None)
        self.backend = open_backend(self.model_dir, backend, precision, threads=enc, decoder_threads=dec)
        self.segmenter = Segmenter(self.backend, self.model_dir.preprocess)
        self._encoded: Encoded | None = None

    def set_image(self, image: np.ndarray) -> None:
        """image: HxWx3 uint8 RGB (grey HxW is accepted and repeated to 3 channels)."""
        image = _as_rgb(image)
        self._encoded = self.segmenter.encode(image)

    def predict(self, boxes) -> tuple[np.ndarray, np.ndarray]:
        """boxes (N,4) x0,y0,x1,y1 in the image's pixels -> masks (N,H,W) bool, scores (N,)."""
        if self._encoded is None:
            raise InputError("predict() before set_image(): give the predictor an image first")
        h, w = self._encoded.original_hw
        masks, scores, _ = self.segmenter.decode(self._encoded, validate_boxes(boxes, h, w))
        return masks, scores

    def stream(self, source, boxes=None, boxes_file=None, track: bool = False,
               reuse: ReusePolicy | None = None, realtime: bool = False):
        """FrameResults for every frame of `source` (anything open_source accepts).

        realtime: see RealtimeStream; build the Predictor with realtime=True for it too,
        so encoder and decoder get their own threads.
        """
        from medsam_edge.runtime.sources import Source, open_source

        src = source if isinstance(source, Source) else open_source(source)
        schedule = BoxSchedule.from_file(boxes_file) if boxes_file else (
            BoxSchedule.constant(boxes) if boxes is not None else None)
        prompter = Prompter(schedule, BoxTracker() if track else None)
        if realtime:
            return RealtimeStream(self.segmenter, src, prompter, pace=not getattr(src, "is_live", False))
        return Stream(self.segmenter, src, prompter, reuse or ReusePolicy())

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"image dtype {image.dtype}: expected uint8 RGB (convert 16-bit data to 8 bits first)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) == 0:
        raise InputError(f"image shape {image.shape}: expected HxWx3 RGB")
    return np.ascontiguousarray(image[:, :, :3])
