"""The Python API for embedding medsam-edge in other systems.

    from medsam_edge.runtime import Predictor
    p = Predictor("models/lite_medsam")
    p.set_image(rgb)                                   # the encoder runs once
    masks, scores = p.predict(boxes=[[x0, y0, x1, y1]])  # decoder only, as often as you like

    with p.session(prompts=[[x0, y0, x1, y1]], track=True) as s:   # push: your capture loop
        result = s.process(frame)

    for result in p.stream("clip.mp4", prompts=[[x0, y0, x1, y1]]):  # pull: a source
        ...

The predictor owns the backend it opens; sessions and streams share it. Real-time sessions
run encoder and decoder at once, so on a CPU the predictor gives each its own threads
(runtime.realtime.split_threads) and reopens the backend when the mode changes; the log
says so. A backend the caller opened (Predictor(model_dir, backend=an engines Backend))
stays the caller's: it is used as it is in both modes and never reopened or closed here.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from medsam_edge.contract import model_spec
from medsam_edge.engines.base import Backend
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, load_model_dir
from medsam_edge.runtime.image import to_rgb
from medsam_edge.runtime.prompts import Prompt, Prompter, as_prompts, validate_prompts
from medsam_edge.runtime.realtime import RealtimeSession, split_threads
from medsam_edge.runtime.reuse import ReusePolicy
from medsam_edge.runtime.segmenter import Encoded, Segmenter
from medsam_edge.runtime.session import Session
from medsam_edge.runtime.stream import Stream

log = logging.getLogger(__name__)


class Predictor:
    def __init__(self, model_dir, backend: str | Backend = "auto", precision: str = "auto",
                 threads: int | None = None, realtime: bool = False, rebuild: str | None = None) -> None:
        """model_dir: a directory written by `medsam-edge export` (or its ModelDir).
        backend: "auto" or a name `medsam-edge info` lists; precision: "auto" (the fastest the
        model directory's fidelity report allows on this CPU: engines/auto_precision.py) or a
        key of contract.PRECISIONS.
        threads: CPU threads (default every core). realtime: open the backend for real-time
        sessions first (encoder and decoder threads split); either mode works later.
        rebuild: TensorRT engines' rebuild policy (engines.select.open_backend).
        backend may also be an open engines Backend for this model (a wrapper, a backend
        opened with engines.loaders.open_files): precision, threads and rebuild are then the
        caller's business, real-time sessions run on its threads as they are (no split), and
        close() leaves it open."""
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
            raise InputError(f"threads={threads!r}: expected a whole number of at least 1, or None for every core")
        self._closed = False
        self.model_dir: ModelDir = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
        self._owns = not isinstance(backend, Backend)
        self._options = dict(name=backend, precision=precision, rebuild=rebuild)
        self._threads = threads
        self._warned_clicks = False
        self._encoded: Encoded | None = None
        self.backend = None if self._owns else backend
        self._open(realtime)

    @property
    def box_trained(self) -> bool:
        return model_spec(self.model_dir.model_id).box_trained

    def _open(self, realtime: bool) -> None:
        from medsam_edge.engines.select import open_backend

        if not self._owns:
            self.realtime = realtime
            self.segmenter = Segmenter(self.backend, self.model_dir.preprocess)
            return
        if self.backend is not None:
            log.info("reopening the backend with %s threads", "real-time" if realtime else "deterministic")
            self.backend.close()
        enc, dec = split_threads(self._threads) if realtime else (self._threads, None)
        options = {k: v for k, v in self._options.items() if v is not None}
        self.backend = open_backend(self.model_dir, threads=enc, decoder_threads=dec, **options)
        self.realtime = realtime
        self.segmenter = Segmenter(self.backend, self.model_dir.preprocess)
        self._encoded = None

    def _mode(self, realtime: bool) -> None:
        if self._closed:
            raise InputError("this Predictor is closed; open a new one")
        # Only CPU backends split threads; elsewhere one backend serves both modes.
        if realtime != self.realtime and self.backend.device == "cpu" and self._owns:
            self._open(realtime)

    # -- one image -------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """image: HxWx3 uint8 in `image_format` ("RGB", or "BGR" for OpenCV captures), HxW or
        HxWx1 grey, or HxWx4 with alpha (ignored). The encoder runs once."""
        self._mode(False)
        self._encoded = self.segmenter.encode(to_rgb(image, image_format))

    def predict(self, boxes=None, points=None, labels=None, prompts=None, return_logits: bool = False):
        """Masks for the image set_image() was given, in its pixels.

        boxes: (N, 4) x0, y0, x1, y1 -> N prompts. points (K, 2) x, y with labels (K,)
        (1 positive, 0 negative; default all positive): with one box they refine that
        box's prompt; without a box they are one prompt of clicks alone (poor on the
        box-trained medical models: the log says so). prompts: Prompt objects, for
        several objects each with its own clicks.
        Returns masks (N, H, W) bool and scores (N,) float32, plus logits (N, 1, 256, 256)
        float32 when return_logits.
        """
        if self._closed:
            raise InputError("this Predictor is closed; open a new one")
        if self._encoded is None:
            raise InputError("predict() before set_image(): give the predictor an image first")
        h, w = self._encoded.original_hw
        chosen = validate_prompts(self._prompts(boxes, points, labels, prompts), h, w)
        if not chosen:
            raise InputError("predict(): no prompt; give boxes, points or prompts")
        self._warn_clicks_alone(chosen)
        masks, scores, logits = self.segmenter.decode(self._encoded, chosen)
        return (masks, scores, logits) if return_logits else (masks, scores)

    @staticmethod
    def _prompts(boxes, points, labels, prompts) -> list[Prompt]:
        if prompts is not None:
            if boxes is not None or points is not None:
                raise InputError("predict(): give prompts, or boxes/points, not both")
            return as_prompts(prompts)
        given = as_prompts(boxes)
        if points is None:
            if labels is not None:
                raise InputError("predict(): labels without points")
            return given
        click = Prompt.of(points=points, labels=labels)
        if len(click.points) != len(click.labels):
            raise InputError(f"predict(): {len(click.points)} points but {len(click.labels)} labels")
        if len(given) > 1:
            raise InputError("predict(): points with several boxes: say which box each click belongs to with "
                             "prompts=[Prompt.of(box=..., points=..., labels=...), ...]")
        return [given[0].with_points(click.points, click.labels)] if given else [click]

    def _warn_clicks_alone(self, prompts: list[Prompt]) -> None:
        if self.box_trained and not self._warned_clicks and any(p.box is None for p in prompts):
            self._warned_clicks = True
            log.warning("%s was trained on box prompts: clicks alone give poor or empty masks; give a box and "
                        "let the clicks refine it", self.model_dir.model_id)

    # -- streams ---------------------------------------------------------------------------
    def session(self, prompts=None, prompts_file=None, track: bool = False, reuse=None, realtime: bool = False,
                refine: bool = False, track_centroid: bool = False, on_result=None, keep_logits: bool = False,
                image_format: str = "RGB", queue_size: int = 2, description: str = "session", motion: bool = True):
        """A push session over this predictor's backend (runtime.session.Session, or
        runtime.realtime.RealtimeSession with realtime=True).

        prompts: Prompt objects or (N, 4) boxes for every frame (set_prompts() changes them);
        prompts_file: per-frame prompts (runtime.schedule formats); track: propagate each
        prompt from its last mask (lost tracks reported), with the mask centroid as a click
        when track_centroid; reuse: a ReusePolicy, "on", "exact" or "off" (default on;
        deterministic mode only); refine: a second decoder pass with each mask's centroid;
        on_result: real-time mode's callback (runs in the session's answering thread);
        motion: compensate the motion between a reused embedding's frame and the frame
        answered (runtime.motion; False: masks as the embedding's frame shows them);
        description: what the frames come from, in words, for each result's frame.source
        (stream() passes its source's description).
        """
        from medsam_edge.runtime.schedule import PromptSchedule
        from medsam_edge.runtime.tracker import PromptTracker

        if prompts is not None and prompts_file is not None:
            raise InputError("give prompts or prompts_file, not both")
        schedule = (PromptSchedule.from_file(prompts_file) if prompts_file is not None else
                    PromptSchedule.constant(prompts) if prompts is not None else None)
        if schedule is not None:
            self._warn_clicks_alone([p for f in schedule.frames for p in schedule.by_frame[f]])
        prompter = Prompter(schedule, PromptTracker(centroid=track_centroid) if track else None)
        self._mode(realtime)
        if realtime:
            return RealtimeSession(self.segmenter, prompter, refine, keep_logits, on_result, queue_size, description,
                                   image_format, motion=motion)
        if on_result is not None:
            raise InputError("on_result is for real-time sessions; a deterministic session returns each result")
        policy = reuse_policy(reuse)
        policy = policy if motion else replace(policy, motion=False)
        return Session(self.segmenter, prompter, policy, refine, keep_logits, description, image_format)

    def stream(self, source, prompts=None, prompts_file=None, track: bool = False, reuse=None,
               realtime: bool | None = None, refine: bool = False, track_centroid: bool = False,
               loop: bool = False, max_frames: int | None = None, pace: bool | None = None,
               motion: bool = True) -> Stream:
        """FrameResults for every frame of `source` (a path, URL, camera index, array or an
        open runtime.sources.Source). realtime None: real-time for live sources, else not.
        A source this opens is closed when the stream ends or is closed."""
        from medsam_edge.runtime.sources import Source, open_source

        owns = not isinstance(source, Source)
        src = open_source(source, loop=loop) if owns else source
        try:
            live = realtime if realtime is not None else bool(getattr(src, "is_live", False))
            session = self.session(prompts, prompts_file, track, reuse, live, refine, track_centroid,
                                   description=getattr(src, "description", "stream"), motion=motion)
        except BaseException:
            if owns:
                src.close()
            raise
        return Stream(session, src, owns_source=owns, pace=pace, max_frames=max_frames)

    def close(self) -> None:
        self._closed = True
        self._encoded = None
        if self.backend is not None and self._owns:
            self.backend.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reuse_policy(reuse) -> ReusePolicy:
    """A ReusePolicy from a policy, None (the default: on), "on", "exact" or "off"."""
    if reuse is None or reuse == "on":
        return ReusePolicy()
    if isinstance(reuse, ReusePolicy):
        return reuse
    if reuse == "exact":
        return ReusePolicy(near=False)
    if reuse == "off":
        return ReusePolicy.off()
    raise InputError(f"reuse {reuse!r}: expected a ReusePolicy, 'on', 'exact' or 'off'")
