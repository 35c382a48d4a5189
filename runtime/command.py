"""`medsam-edge run`: a model directory and a source in, overlay video, masks and JSONL out."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from medsam_edge.errors import InputError
from medsam_edge.runtime.reuse import ReusePolicy

log = logging.getLogger("medsam_edge.run")

SOURCE_HELP = (
    "video file, image file or folder, DICOM file (single image or cine), camera index (0), "
    "RTSP/HTTP URL, GStreamer pipeline, or pydicom:NAME for a DICOM that pydicom ships"
)
BOXES_HELP = (
    'per-frame boxes: JSON {"0": [[x0,y0,x1,y1], ...], "40": [...]} or CSV with a header '
    "frame,x0,y0,x1,y1; a frame's boxes hold until the next frame the file names"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="segment a video, DICOM cine, image folder or live stream",
        description="Segment every frame of SOURCE with the model in MODEL_DIR, prompted by boxes.",
    )
    p.add_argument("model_dir", type=Path, help="model directory written by `medsam-edge export`")
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1",
                   help="a box prompt in frame pixels; repeat for several objects")
    p.add_argument("--boxes", type=Path, metavar="FILE", help=BOXES_HELP)
    p.add_argument("--track", action="store_true",
                   help="propagate each box from the previous frame's mask (lost tracks are reported)")
    p.add_argument("--reuse", choices=("on", "exact", "off"), default="on",
                   help="embedding reuse: on (exact and near repeats), exact (identical frames only), off")
    p.add_argument("--reuse-threshold", type=float, default=ReusePolicy.threshold,
                   help="near-repeat threshold: mean thumbnail difference, fraction of full range "
                        f"(default {ReusePolicy.threshold})")
    p.add_argument("--reuse-max", type=int, default=ReusePolicy.max_consecutive,
                   help=f"most frames in a row that may reuse one embedding (default {ReusePolicy.max_consecutive})")
    p.add_argument("--realtime", action="store_true",
                   help="threads; encoder on the newest frame, decoder on every frame; drops when behind "
                        "(default for live sources; files replay at their frame rate)")
    p.add_argument("--deterministic", action="store_true", help="every frame in order, even for a live source")
    p.add_argument("--backend", default="auto",
                   help="auto, onnxruntime-cpu, onnxruntime-cuda, onnxruntime-trt, tensorrt (default auto)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8", "int8dyn"),
                   help="model precision (int8dyn: the CPU-only dynamic INT8 encoder from `calibrate`)")
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime (default: all cores; real-time mode gives the "
                   "decoder one of them and the encoder the rest)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory (default ./out)")
    p.add_argument("--masks", choices=("none", "png", "npz"), default="none", help="also write masks")
    p.add_argument("--no-video", action="store_true", help="do not write the overlay video")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--loop", action="store_true", help="loop a file source (with --max-frames)")
    p.set_defaults(func=run)


def _schedule(args):
    from medsam_edge.runtime.prompts import BoxSchedule, parse_box

    if args.box and args.boxes:
        raise InputError("give --box or --boxes, not both")
    if args.boxes:
        return BoxSchedule.from_file(args.boxes)
    if args.box:
        return BoxSchedule.constant([parse_box(b) for b in args.box])
    raise InputError("no prompt: give at least one --box x0,y0,x1,y1 or a --boxes file")


def _policy(args) -> ReusePolicy:
    if args.reuse == "off":
        return ReusePolicy.off()
    if not 0 <= args.reuse_threshold <= 1:
        raise InputError(f"--reuse-threshold {args.reuse_threshold}: expected a fraction between 0 and 1")
    return ReusePolicy(near=args.reuse == "on", threshold=args.reuse_threshold, max_consecutive=args.reuse_max)


def run(args: argparse.Namespace) -> int:
    from itertools import islice

    from medsam_edge.runtime.pipeline import Stream
    from medsam_edge.runtime.predictor import Predictor
    from medsam_edge.runtime.prompts import BoxTracker, Prompter
    from medsam_edge.runtime.realtime import RealtimeStream
    from medsam_edge.runtime.sinks import open_sinks
    from medsam_edge.runtime.sources import open_source

    schedule = _schedule(args)
    policy = _policy(args)
    source = open_source(args.source, loop=args.loop)
    if args.loop and not args.max_frames:
        raise InputError("--loop needs --max-frames (otherwise it never ends)")
    realtime = args.realtime or (source.is_live and not args.deterministic)
    predictor = Predictor(args.model_dir, args.backend, args.precision, threads=args.threads, realtime=realtime)
    prompter = Prompter(schedule, BoxTracker() if args.track else None)
    seg = predictor.segmenter
    frames = islice(source, args.max_frames) if args.max_frames else source
    stream = (RealtimeStream(seg, frames, prompter, pace=not source.is_live) if realtime
              else Stream(seg, frames, prompter, policy))
    mode = "real-time" if realtime else "deterministic"
    log.info("model %s, backend %s (%s, %s), %s mode, reuse %s",
             predictor.model_dir.model_id, seg.backend.name, seg.backend.device, seg.backend.precision,
             mode, "off" if realtime else args.reuse)
    total = source.frame_count if not args.loop else args.max_frames
    if total and args.max_frames:
        total = min(total, args.max_frames)
    sinks = open_sinks(args.out, video=not args.no_video, masks=None if args.masks == "none" else args.masks,
                       jsonl=True, fps=source.fps)
    latencies, writes = [], []
    t_start = time.perf_counter()
    bar = _progress(total, source.is_live)
    try:
        with sinks:
            for result in stream:
                t0 = time.perf_counter()
                sinks.write(result)
                writes.append((time.perf_counter() - t0) * 1e3)
                latencies.append(result.latency_ms.get("capture_to_mask", result.latency_ms.get("total", 0.0)))
                bar.update(1)
                elapsed = time.perf_counter() - t_start
                bar.set_postfix_str(f"{len(latencies) / elapsed:.1f} fps, {latencies[-1]:.0f} ms, {result.embedding}",
                                    refresh=False)
    finally:
        bar.close()
        source.close()
        predictor.close()
    wall = time.perf_counter() - t_start
    summary = {
        "model": predictor.model_dir.model_id,
        **seg.backend.describe(),
        "mode": mode,
        "source": source.description if hasattr(source, "description") else str(args.source),
        "seconds": round(wall, 3),
        "fps": round(len(latencies) / wall, 3) if wall > 0 else 0.0,
        **stream.stats.summary(getattr(source, "skipped", 0)),
        "latency_ms": _percentiles(latencies),
        "write_ms": _percentiles(writes),
        "outputs": [str(p) for p in getattr(sinks, "outputs", [])],
    }
    from medsam_edge.atomic import write_json

    write_json(Path(args.out) / "summary.json", summary)
    print(json.dumps({k: summary[k] for k in ("frames", "fps", "reuse_rate", "dropped", "bad_frames_skipped",
                                              "blank_skipped", "backend", "precision")}))
    print(f"wrote {args.out}")
    return 0


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)} | {"mean": round(float(a.mean()), 2)}


def _progress(total: int | None, live: bool):
    from tqdm import tqdm

    return tqdm(total=None if live else total, unit="frame", dynamic_ncols=True, leave=True,
                desc="live" if live else "frames")
