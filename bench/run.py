"""The body of `medsam-edge bench`: frames, rows, comparison, streaming, floor, report.

Whatever happens (a bad option, no frames, a backend failing, Ctrl-C), the report
that far is written to --out before the command returns or raises.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from medsam_edge.atomic import write_json, write_text
from medsam_edge.errors import InputError

from medsam_edge.bench import fidelity, machine, plots, report, rows, streaming
from medsam_edge.bench.timing import MemorySampler, process_peak_rss_mb

DEFAULT_FRAMES = "pydicom:examples_ybr_color.dcm@160,60,210,125"
# (frames, runs) by input size class; --quick keeps a run to a few minutes on 2 cores.
PRESETS = {("quick", "small"): (6, 2), ("quick", "large"): (2, 1), ("full", "small"): (24, 5), ("full", "large"): (6, 2)}
STREAM_FRAMES = {"quick": 60, "full": 150}
STREAM_THRESHOLDS = {"quick": (0.005,), "full": (0.0025, 0.005, 0.01)}


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    rep: dict = {"format": report.FORMAT, "version": 1, "status": "running", "command": command_line(args),
                 "out": str(args.out),
                 "errors": [], "thresholds": dict(fidelity.THRESHOLDS), "rows": [], "streaming": []}
    t0 = time.perf_counter()
    clock = machine.cpu_clock()
    comparison = None
    try:
        wanted = rows.parse(args.backends)  # before anything slow: a typo fails at once
        rep["machine"] = machine.describe()
        from medsam_edge.manifest import load_model_dir

        md = load_model_dir(args.model_dir)
        mode = "quick" if args.quick else "full"
        size = "small" if int(md.manifest["input_size"]) <= 256 else "large"
        n_frames = args.max_frames or PRESETS[(mode, size)][0]
        runs = args.runs or PRESETS[(mode, size)][1]
        rep["model"] = {"dir": str(md.path), "model_id": md.model_id, "input_size": md.manifest["input_size"],
                        "checkpoint": md.manifest.get("checkpoint")}
        if not (args.frames or args.stream or args.long_run):
            # pydicom's echocardiography cine ships with the runtime: real ultrasound
            # pixels on any machine, the chamber box as the prompt.
            args.frames = [DEFAULT_FRAMES]
            say(f"no --frames given: measuring on {DEFAULT_FRAMES}")
        bench_frames = _load_frames(args.frames, n_frames) if args.frames else []
        rep["settings"] = {"mode": mode, "frames": len(bench_frames), "runs": runs, "warmup": args.warmup,
                           "threads": args.threads,
                           "sources": list(args.frames or []), "boxes_per_frame": _boxes_per_frame(bench_frames)}
        rep["frames"] = [{"source": f.source, "index": f.index, "hw": list(f.image.shape[:2]),
                          "boxes": f.boxes.tolist(), "read_ms": round(f.read_ms, 3)} for f in bench_frames]
        rep["compute"] = _compute(md.model_id, rep["settings"]["boxes_per_frame"], mode)
        with MemorySampler() as sampler:
            if bench_frames:
                specs = rows.plan(md, wanted, args.checkpoint, args.threads)
                comparison = _comparison(specs, bench_frames, runs, args.warmup, sampler)
                try:
                    comparison.run()
                finally:
                    _summarize_rows(rep, comparison, sampler)
            _streaming(rep, md, args, mode)
        rep["estimate_full_s"] = _estimate(rep)
        failed = [r for r in rep["rows"] if r["status"] == "failed"]
        rep["status"] = "partial" if failed else "complete"
        for r in failed:
            say(f"{r['name']} failed ({r['failed_at']}): {r['error']}")
        return 1 if failed else 0
    except KeyboardInterrupt:
        rep["status"] = "interrupted"
        raise
    except InputError as e:
        rep["status"] = "error"
        rep["errors"].append(str(e))
        raise InputError(f"{e} (report: {Path(args.out) / 'report.json'})") from None
    except BaseException as e:
        rep["status"] = "error"
        rep["errors"].append(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        if comparison is not None and not rep["rows"]:
            _summarize_rows(rep, comparison, None)
        rep["wall_s"] = round(time.perf_counter() - t0, 1)
        rep.update(machine.end_of_run(clock))
        rep["process_peak_rss_mb"] = process_peak_rss_mb()
        _write(rep, Path(args.out), quiet=rep["status"] in ("error", "interrupted"))


def _load_frames(specs, n):
    from medsam_edge.bench import frames

    return frames.load(list(specs), n)


def _boxes_per_frame(bench_frames) -> int:
    return max((len(f.boxes) for f in bench_frames), default=1)


def _comparison(specs, bench_frames, runs, warmup, sampler):
    from medsam_edge.bench.compare import Comparison

    return Comparison(specs, bench_frames, runs, warmup, sampler, say)


def _summarize_rows(rep: dict, comparison, sampler) -> None:
    ref = next((r for r in comparison.rows if r.name == rows.REFERENCE), None)
    peaks = sampler.peaks if sampler is not None else {}
    rep["rows"] = [report.row_json(r, ref, rep.get("compute"), rep["thresholds"], peaks) for r in comparison.rows]


def _compute(model_id: str, boxes: int, mode: str) -> dict | None:
    """The floor needs torch (for the FLOP counter); without it the report says so."""
    from medsam_edge.bench import flops

    try:
        return report.compute_json(model_id, boxes, flops.matmul_rate(2048, 3 if mode == "quick" else 5))
    except ImportError as e:
        return {"skipped": f"torch is needed to count FLOPs ({e})"}


def _streaming(rep: dict, md, args, mode: str) -> None:
    if not args.stream and not args.long_run:
        return
    from medsam_edge.runtime import Predictor

    predictor = Predictor(md, args.stream_backend, args.stream_precision, threads=args.stream_threads)
    # Real-time mode as `medsam-edge run` opens it: encoder and decoder threads split.
    live = Predictor(md, args.stream_backend, args.stream_precision, threads=args.stream_threads, realtime=True)
    fresh_by_clip = {}
    try:
        for spec in args.stream or []:
            st = streaming.scenario(predictor, spec, args.stream_frames or STREAM_FRAMES[mode],
                                    STREAM_THRESHOLDS[mode], say, realtime_predictor=live)
            fresh_by_clip[st["clip"]] = st.pop("fresh_masks")
            rep["streaming"].append(st | {"threads": _threads(predictor), "realtime_threads": _threads(live)})
        if args.long_run:
            clip = streaming.parse_spec(args.long_run)[0]
            lr = streaming.long_run(live, args.long_run, args.long_frames, fresh_by_clip.get(clip), say)
            rep["long_run"] = lr | {"threads": _threads(live)}
    finally:
        predictor.close()
        live.close()


def _threads(predictor) -> str:
    """'encoder/decoder' onnxruntime threads as the backend opened them, for the report."""
    t = predictor.backend.describe().get("threads")
    return f"{t['encoder']}/{t['decoder']}" if t else "n/a"


def _estimate(rep: dict) -> float | None:
    """Seconds a full (not --quick) run of the same command would take, from what was measured."""
    s = rep.get("settings") or {}
    size = "small" if int((rep.get("model") or {}).get("input_size", 1024)) <= 256 else "large"
    frames, runs = PRESETS[("full", size)]
    total = 0.0
    for r in rep["rows"]:
        if r.get("latency_ms"):
            total += (r["load_s"] or 0) + r["latency_ms"]["e2e"]["mean"] / 1e3 * (frames * runs + s.get("warmup", 1))
    for st in rep["streaming"]:
        off = st["rows"][0]
        per_frame = off["seconds"] / max(1, off["frames"])
        n = STREAM_FRAMES["full"]
        total += per_frame * n * (1 + sum(1 - r["reuse_rate"] for r in st["rows"][1:-1])) + n / st["clip_fps"]
    if rep.get("long_run"):
        total += rep["long_run"]["frames_requested"] / rep["long_run"]["clip_fps"]  # paced: wall time is fixed
    return round(total, 0) if total else None


def _write(rep: dict, out: Path, quiet: bool) -> None:
    """Report files; on an error the command's one-line message is all the terminal gets."""
    out.mkdir(parents=True, exist_ok=True)
    rep["plots"] = plots.write(rep, out) if rep["rows"] or rep.get("long_run") else {"skipped": "nothing measured"}
    write_json(out / "report.json", rep)
    md = report.markdown(rep)
    write_text(out / "report.md", md)
    if quiet:
        return
    print(md)
    say(f"wrote {out / 'report.json'}, {out / 'report.md'}" + "".join(f", {p}" for p in rep["plots"].get("files", [])))


def command_line(args) -> str:
    """The command as it could be typed again, rebuilt from the parsed options."""
    parts = ["medsam-edge", "bench", str(args.model_dir)]
    if args.frames:
        parts += ["--frames", *args.frames]
    for flag, value in (("--backends", ",".join(args.backends or [])), ("--max-frames", args.max_frames),
                        ("--runs", args.runs), ("--checkpoint", args.checkpoint), ("--long-run", args.long_run),
                        ("--stream-frames", args.stream_frames), ("--stream-threads", args.stream_threads),
                        ("--threads", args.threads)):
        if value:
            parts += [flag, str(value)]
    for spec in args.stream or []:
        parts += ["--stream", spec]
    if args.long_run:
        parts += ["--long-frames", str(args.long_frames)]
    if args.quick:
        parts.append("--quick")
    parts += ["--out", str(args.out)]
    return shlex.join(parts)
