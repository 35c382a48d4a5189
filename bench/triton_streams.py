"""Many streams against one Triton server: throughput, capture-to-mask latency, overhead.

Starts the tritonserver of the nvidia-pytriton wheel on 127.0.0.1 with a python-platform
repository written from MODEL_DIR (or uses a running server, --url), then for each
stream count runs that many clients at once, each a Predictor with `--backend triton://`
streaming the same frames through the runtime (every frame encoded and decoded: reuse
off; --realtime: real-time mode paced at the clip's rate). Reports, per stream count,
masks per second in total and capture-to-mask p50/p99; and, at one stream, the
per-request overhead of Triton against the same backend in-process (encode and decode
medians, Triton minus in-process).

    python -m medsam_edge.bench.triton_streams models/lite_medsam --streams 1,2,4,8 --frames 60 \\
        --out out/triton_streams.json --md out/triton_streams.md

Every run is bounded: --frames per stream and --max-seconds per stream count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path

import numpy as np

from medsam_edge.atomic import write_json, write_text
from medsam_edge.bench.frames import centre_box
from medsam_edge.errors import InputError

DEFAULT_SOURCE = "pydicom:examples_ybr_color.dcm"
DEFAULT_BOX = (160.0, 60.0, 210.0, 125.0)


def pct(values, qs=(50, 99)) -> dict:
    a = np.asarray(values, float)
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in qs} if a.size else {}


def load_frames(spec: str, n: int) -> tuple[list[np.ndarray], float]:
    """The first n frames of a source, in memory (so reading costs the same for every stream)."""
    from medsam_edge.runtime.sources import open_source

    src = open_source(spec)
    try:
        frames = [f.image for f in islice(src, n)]
        fps = src.fps or 30.0
    finally:
        src.close()
    if not frames:
        raise InputError(f"{spec}: no frames")
    return frames, fps


def run_stream(predictor, frames: list[np.ndarray], fps: float, box, realtime: bool, deadline: float) -> dict:
    """One client's stream; stops at the deadline. -> latencies and per-stage times (ms)."""
    from medsam_edge.runtime.reuse import ReusePolicy
    from medsam_edge.runtime.sources import ArraySource

    source = ArraySource(frames, fps=fps)
    stream = predictor.stream(source, prompts=[box], reuse=ReusePolicy.off(), realtime=realtime)
    lat, enc, dec, masks = [], [], [], 0
    for r in stream:
        lat.append(r.latency_ms.get("capture_to_mask", r.latency_ms.get("total", 0.0)))
        if "encode" in r.latency_ms:
            enc.append(r.latency_ms["encode"])
        dec.append(r.latency_ms.get("decode", 0.0))
        masks += len(r.masks)
        if time.monotonic() > deadline:
            break
    return {"latency": lat, "encode": enc, "decode": dec, "masks": masks}


def measure(model_dir, url: str, counts: list[int], frames, fps: float, box, realtime: bool,
            max_seconds: float, say=print) -> list[dict]:
    from medsam_edge.runtime import Predictor

    rows = []
    for n in counts:
        predictors = [Predictor(model_dir, url, realtime=realtime) for _ in range(n)]
        outs: list[dict | None] = [None] * n
        errors: list[str] = []
        deadline = time.monotonic() + max_seconds

        def work(i: int) -> None:
            try:
                outs[i] = run_stream(predictors[i], frames, fps, box, realtime, deadline)
            except Exception as e:  # reported in the row; the other streams go on
                errors.append(f"stream {i}: {e}")

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max_seconds + 120)
        wall = time.perf_counter() - t0
        for p in predictors:
            p.close()
        done = [o for o in outs if o]
        lat = [x for o in done for x in o["latency"]]
        row = {"streams": n, "seconds": round(wall, 2), "frames": len(lat),
               "masks": sum(o["masks"] for o in done), "errors": errors,
               "masks_per_s": round(sum(o["masks"] for o in done) / wall, 2) if wall else 0.0,
               "capture_to_mask_ms": pct(lat),
               "encode_ms": pct([x for o in done for x in o["encode"]], (50,)),
               "decode_ms": pct([x for o in done for x in o["decode"]], (50,))}
        say(f"{n} stream(s): {row['masks_per_s']} masks/s, capture-to-mask {row['capture_to_mask_ms']}"
            + (f", errors: {errors}" if errors else ""))
        rows.append(row)
    return rows


def overhead(model_dir, url: str, frames, box, threads: int | None) -> dict:
    """Encode and decode medians at one stream: in-process onnxruntime vs the same through Triton."""
    from medsam_edge.runtime import Predictor

    out = {}
    for label, backend in (("in_process", "onnxruntime-cpu"), ("triton", url)):
        p = Predictor(model_dir, backend, threads=threads if label == "in_process" else None)
        enc, dec = [], []
        try:
            for image in frames:
                t = {}
                e = p.segmenter.encode(image, timings=t)
                p.segmenter.decode(e, [box], t)
                enc.append(t["encode"])
                dec.append(t["decode"])
        finally:
            p.close()
        out[label] = {"encode_ms": round(float(np.median(enc)), 2), "decode_ms": round(float(np.median(dec)), 2)}
    out["overhead_ms"] = {k: round(out["triton"][k] - out["in_process"][k], 2) for k in ("encode_ms", "decode_ms")}
    return out


def markdown(result: dict) -> str:
    o = result["overhead"]
    lines = [f"### Triton: {result['model_id']}, {result['mode']} mode, {result['frames_per_stream']} frames per stream",
             "", f"Server: {result['server']}. Per-request overhead at one stream (Triton minus in-process, median): "
             f"encode {o['overhead_ms']['encode_ms']} ms (in-process {o['in_process']['encode_ms']} ms), "
             f"decode {o['overhead_ms']['decode_ms']} ms (in-process {o['in_process']['decode_ms']} ms).", "",
             "| streams | masks/s total | capture-to-mask p50 ms | p99 ms | encode p50 ms | decode p50 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        c = r["capture_to_mask_ms"]
        lines.append(f"| {r['streams']} | {r['masks_per_s']} | {c.get('p50', '–')} | {c.get('p99', '–')} | "
                     f"{r['encode_ms'].get('p50', '–')} | {r['decode_ms'].get('p50', '–')} | {len(r['errors'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medsam_edge.bench.triton_streams", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--source", default=DEFAULT_SOURCE, help=f"frames to stream (default {DEFAULT_SOURCE})")
    ap.add_argument("--box", help="x0,y0,x1,y1 in the source's pixels (default: the echo cine's chamber)")
    ap.add_argument("--streams", default="1,2,4,8", help="stream counts, comma-separated (default 1,2,4,8)")
    ap.add_argument("--frames", type=int, default=60, help="frames per stream (default 60)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time budget per stream count (default 300)")
    ap.add_argument("--realtime", action="store_true", help="real-time mode, paced at the source's frame rate")
    ap.add_argument("--url", help="a running server (triton://HOST:PORT/MODEL); default: start one here")
    ap.add_argument("--threads", type=int, help="onnxruntime threads on the server and in-process (default: all)")
    ap.add_argument("--out", type=Path, help="JSON results")
    ap.add_argument("--md", type=Path, help="the markdown table, for BENCHMARKS.md")
    args = ap.parse_args(argv)
    try:
        from medsam_edge.manifest import load_model_dir
        from medsam_edge.runtime.prompts import parse_box

        md = load_model_dir(args.model_dir)
        counts = [int(x) for x in args.streams.split(",") if x.strip()]
        if not counts or min(counts) < 1 or args.frames < 1:
            raise InputError("--streams and --frames must be positive")
        frames, fps = load_frames(args.source, args.frames)
        box = parse_box(args.box) if args.box else (DEFAULT_BOX if args.source == DEFAULT_SOURCE
                                                     else tuple(centre_box(*frames[0].shape[:2])[0]))
        server = None
        with tempfile.TemporaryDirectory(prefix="triton-bench-") as tmp:
            if args.url:
                url = args.url
            else:
                from medsam_edge.serving.local_server import start
                from medsam_edge.serving.repository import write_repository

                repo = write_repository(md, Path(tmp) / "repo", threads=args.threads,
                                        max_streams=max(counts) + 1, instances=1)
                server = start(repo)
                url = f"triton://{server.url}/medsam"
            try:
                print(f"server {url}; {len(frames)} frames per stream, streams {counts}", flush=True)
                result = {"model_id": md.model_id, "server": url, "mode": "real-time" if args.realtime else
                          "deterministic", "frames_per_stream": len(frames), "source": args.source, "box": list(box),
                          "overhead": overhead(md, url, frames[:min(5, len(frames))], box, args.threads),
                          "rows": measure(md, url, counts, frames, fps, box, args.realtime, args.max_seconds)}
            finally:
                if server is not None:
                    server.stop()
    except InputError as e:
        print(f"triton_streams: error: {e}", file=sys.stderr)
        return 2
    text = markdown(result)
    print(text)
    if args.out:
        write_json(args.out, result)
    if args.md:
        write_text(args.md, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
