"""`medsam-edge run`: a model directory and a source in, overlay video, masks and JSONL out.

What a user can rely on in --out (runtime.outputs): a run is complete exactly when
summary.json says `"complete": true`. summary.json is written when the run starts (not
complete) and replaced on every exit that can still write (the end, an error, Ctrl-C,
SIGTERM, a full disk) with `complete`, `stopped` (why) and the last frame every output
holds; what was written before stays valid (files are renamed from their .partial names
as the sinks close). A run killed outright keeps the first summary and only .partial names.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from medsam_edge.contract import PRECISIONS
from medsam_edge.errors import InputError
from medsam_edge.runtime.reuse import ReusePolicy

log = logging.getLogger("medsam_edge.run")

SOURCE_HELP = (
    "video file, image file or folder, DICOM file (single image or cine), camera index (0), "
    "RTSP/HTTP URL, GStreamer pipeline, or pydicom:NAME for a DICOM that pydicom ships"
)
PROMPTS_HELP = (
    'per-frame prompts: JSON {"0": [[x0,y0,x1,y1], {"box": [...], "points": [[x,y]], "labels": [1]}], '
    '"40": [...]} or CSV with a header frame,x0,y0,x1,y1; a frame\'s prompts hold until the next frame the file '
    "names"
)
EPILOG = """\
Prompts: --box for each object; --point x,y[,label] adds a click (label 1 positive, the
default; 0 negative) to the one --box given, or is a prompt of its own without a box.
MedSAM and LiteMedSAM were trained on boxes: a click refines a box, and clicks alone give
poor or empty masks. For several boxes each with its own clicks, use --prompts FILE.

Outputs in --out: overlay.mp4, frames.jsonl (one record per frame), masks (--masks) and
summary.json. A run is complete exactly when summary.json says "complete": true; a run
that stopped early says why and where in summary.json, and what it wrote stays valid.
While it runs, outputs carry hidden .partial names; a killed run leaves only those.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="segment a video, DICOM cine, image folder or live stream",
        description="Segment every frame of SOURCE with the model in MODEL_DIR, prompted by boxes and clicks.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", type=Path, help="model directory written by `medsam-edge export`")
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1",
                   help="a box prompt in frame pixels; repeat for several objects")
    p.add_argument("--point", action="append", default=[], metavar="x,y[,label]",
                   help="a click in frame pixels (label 1 positive, default; 0 negative); repeatable")
    p.add_argument("--prompts", "--boxes", dest="prompts", type=Path, metavar="FILE", help=PROMPTS_HELP)
    p.add_argument("--track", action="store_true",
                   help="propagate each prompt from the previous frame's mask (lost tracks are reported)")
    p.add_argument("--track-centroid", action="store_true",
                   help="with --track: also give the decoder each mask's centroid as a click")
    p.add_argument("--refine", action="store_true",
                   help="a second decoder pass adding each box's mask centroid as a positive click")
    p.add_argument("--reuse", choices=("on", "exact", "off"), default="on",
                   help="embedding reuse: on (exact and near repeats), exact (identical frames only), off")
    p.add_argument("--reuse-threshold", type=float, default=ReusePolicy.threshold,
                   help="near-repeat threshold: change in each prompt's region beyond motion, gain and noise (with "
                        "--no-motion: mean grey difference), fraction of full range "
                        f"(default {ReusePolicy.threshold})")
    p.add_argument("--reuse-max", type=int, default=ReusePolicy.max_consecutive,
                   help=f"most frames in a row that may reuse one embedding (default {ReusePolicy.max_consecutive})")
    p.add_argument("--no-motion", action="store_true",
                   help="do not compensate the motion between a reused embedding's frame and the frame answered")
    p.add_argument("--realtime", action="store_true",
                   help="threads: the encoder on the newest frame; every frame answered at the capture rate by "
                        "warping the last decoder answer along the motion, the decoder only for a new embedding, "
                        "new prompts or a cut (docs/realtime.md); drops when behind (default for live sources; "
                        "files replay at their frame rate)")
    p.add_argument("--deterministic", action="store_true", help="every frame in order, even for a live source")
    p.add_argument("--backend", default="auto",
                   help="auto, or a backend `medsam-edge info` lists (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="model precision (default auto: the fastest here whose fidelity the model directory's report "
                        "says meets its target, e.g. bf16 on a CPU with AVX-512 BF16/AMX, else fp32; the log says "
                        "why): " + "; ".join(f"{k}: {v.description}" for k, v in PRECISIONS.items()))
    p.add_argument("--rebuild", choices=("never", "if-stale", "always"), default="never",
                   help="TensorRT engines missing or built for another GPU/TensorRT: never (default: a cart must "
                        "start in seconds; auto falls back to the next backend and the log says how to build), "
                        "if-stale (build first: minutes of the GPU), always")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores; real-time mode gives the "
                   "encoder all of them and the decoder, which runs far less often, one)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory (default ./out)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--masks", choices=("none", "png", "npz"), default="none", help="also write masks")
    p.add_argument("--no-video", action="store_true", help="do not write the overlay video")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--loop", action="store_true", help="loop a file source (with --max-frames)")
    p.add_argument("--read-timeout", type=float, metavar="SECONDS",
                   help="a video, camera, stream or named pipe that gives no frame for this long ends the run "
                        "with an error (default 5; opening and the first frame get at least 10)")
    from medsam_edge.runtime.cli_args import add_dicom_seg, add_pixel_spacing

    add_dicom_seg(p)
    add_pixel_spacing(p)
    p.set_defaults(func=run)


def _prompts(args):
    """(constant prompts, prompts file) from --box/--point/--prompts; one of them is None."""
    from medsam_edge.runtime.prompts import Prompt, parse_box, parse_point

    if args.prompts and (args.box or args.point):
        raise InputError("give --box/--point or --prompts, not both")
    if args.prompts:
        return None, args.prompts
    boxes = [parse_box(b) for b in args.box]
    clicks = [parse_point(p) for p in args.point]
    if clicks and len(boxes) > 1:
        raise InputError("--point with several --box: say which box each click belongs to in a --prompts file")
    if clicks:
        points, labels = [c[0] for c in clicks], [c[1] for c in clicks]
        return [Prompt.of(box=boxes[0] if boxes else None, points=points, labels=labels)], None
    if boxes:
        return [Prompt.of(box=b) for b in boxes], None
    raise InputError("no prompt: give at least one --box x0,y0,x1,y1 (or --point x,y), or a --prompts file")


def _dicom_seg(source, args, predictor):
    from medsam_edge.runtime.dicom_seg import dicom_seg_sink

    return dicom_seg_sink(source, args.out, predictor.model_dir, predictor.backend.describe(), tracked=args.track)


def _policy(args) -> ReusePolicy:
    if args.reuse == "off":
        return ReusePolicy.off()
    if not 0 <= args.reuse_threshold <= 1:
        raise InputError(f"--reuse-threshold {args.reuse_threshold}: expected a fraction between 0 and 1")
    return ReusePolicy(near=args.reuse == "on", threshold=args.reuse_threshold, max_consecutive=args.reuse_max)


def _check_numbers(args) -> None:
    for flag, value in (("--max-frames", args.max_frames), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: expected a whole number of at least 1")
    if args.reuse_max < 0:
        raise InputError(f"--reuse-max {args.reuse_max}: expected 0 or more")
    if args.track_centroid and not args.track:
        raise InputError("--track-centroid goes with --track")


def run(args: argparse.Namespace) -> int:
    from medsam_edge.runtime.outputs import terminate_as_interrupt

    restore = terminate_as_interrupt()  # from the start: a SIGTERM while loading is a clean stop too
    try:
        return _run(args)
    finally:
        restore()


def _run(args: argparse.Namespace) -> int:
    from medsam_edge.runtime import spacing
    from medsam_edge.runtime.measure import Measured
    from medsam_edge.runtime.outputs import RunOutputs
    from medsam_edge.runtime.predictor import Predictor
    from medsam_edge.runtime.sinks import MIN_VIDEO_SIDE
    from medsam_edge.runtime.sources import open_source

    _check_numbers(args)
    prompts, prompts_file = _prompts(args)
    policy = _policy(args)
    if args.loop and not args.max_frames:
        raise InputError("--loop needs --max-frames (otherwise it never ends)")
    outputs = RunOutputs(args.out, overwrite=args.overwrite)  # a bad --out fails before any work
    source = open_source(args.source, loop=args.loop, read_timeout=args.read_timeout)
    try:
        if prompts and source.first_hw:  # a bad constant prompt fails before any output is opened
            from medsam_edge.runtime.prompts import validate_prompts

            validate_prompts(prompts, *source.first_hw, warn=False)
        if not args.no_video and source.first_hw and min(source.first_hw) < MIN_VIDEO_SIDE:
            h, w = source.first_hw  # the other outputs hold everything: the run goes on without the video
            log.warning("%s: no overlay video: its %dx%d px pictures are under the %d px a side the video writer "
                        "takes", args.source, w, h, MIN_VIDEO_SIDE)
            args.no_video = True
        realtime = args.realtime or (source.is_live and not args.deterministic)
        predictor = Predictor(args.model_dir, args.backend, args.precision, threads=args.threads, realtime=realtime,
                              rebuild=args.rebuild)
        # Before any sink exists: each of these can refuse the input, and nothing is written yet.
        pixel_calibration = spacing.resolve_pixel_calibration(source, args.pixel_spacing)
        extra = [_dicom_seg(source, args, predictor)] if args.dicom_seg else []
    except BaseException:
        source.close()
        raise
    with predictor:
        stream = predictor.stream(source, prompts=prompts, prompts_file=prompts_file, track=args.track,
                                  track_centroid=args.track_centroid, reuse=policy, realtime=realtime,
                                  refine=args.refine, max_frames=args.max_frames, motion=not args.no_motion)
        backend = predictor.backend
        mode = "real-time" if realtime else "deterministic"
        log.info("model %s, backend %s (%s, %s), %s mode, reuse %s", predictor.model_dir.model_id, backend.name,
                 backend.device, backend.precision, mode, "off" if realtime else args.reuse)
        total = source.frame_count if not args.loop else args.max_frames
        if total and args.max_frames:
            total = min(total, args.max_frames)
        summary = {"model": predictor.model_dir.model_id, **backend.describe(), "mode": mode,
                   "source": getattr(source, "description", str(args.source))}
        outputs.open(video=not args.no_video, masks=None if args.masks == "none" else args.masks, fps=source.fps,
                     extra=extra)
        measured = Measured(stream, pixel_calibration)  # the mm sizes, a step before the outputs
        outputs.run(measured, summary, total=total, live=source.is_live, pixel_calibration=pixel_calibration)
    _say_what_went_unused(args, stream, outputs.summary)
    print(json.dumps({k: outputs.summary.get(k) for k in ("complete", "frames", "fps", "reuse_rate", "dropped",
                                                           "bad_frames_skipped", "blank_skipped", "backend",
                                                           "precision", "source_truncated")}))
    print(f"wrote {args.out}")
    return 0


def _say_what_went_unused(args, stream, summary: dict) -> None:
    """The end-of-run lines for a run that went through but did less than asked."""
    positions = stream.frames_read + getattr(stream.source, "skipped", 0)  # source frames seen, bad ones too
    schedule = getattr(getattr(stream.session, "prompter", None), "schedule", None)
    if args.prompts and schedule is not None and not (args.max_frames and stream.frames_read >= args.max_frames):
        unused = [f for f in schedule.frames if f >= positions]
        if unused:
            named = ", ".join(map(str, unused[:5])) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            log.warning("%s names frame%s %s, past the source's last frame %d: those prompts were not used",
                        args.prompts, "s" if len(unused) > 1 else "", named, positions - 1)
    if summary.get("frames") == 0 and summary.get("blank_skipped"):
        log.warning("no frame was segmented: all %d frames read were blank (near-black, as with the probe "
                    "lifted off the skin)", summary["blank_skipped"])
