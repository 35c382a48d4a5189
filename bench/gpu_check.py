"""One call on a GPU machine: the whole GPU layer, against the FP32 PyTorch reference.

    python -m medsam_edge.bench.gpu_check [--model-dir DIR] [--out gpu_check.json]

In order: which backends import and which are present but unusable (and why); the
static TensorRT check and the precision plan of every ONNX file, with predicted latency
on this GPU; TensorRT engines built (the static check first); then each backend as a
bench row (bench.runners: the runtime's Segmenter, each stage's clock stopped after the
backend's sync()) on the same pictures and boxes as the reference, the FP32 PyTorch
modules through the same Segmenter and OpenCV processing, so a difference is the
backend's arithmetic alone: latency per stage (bench.timing), fidelity as the bench
computes it (bench.fidelity: Dice and IoU of the postprocessed masks, embedding cosine)
with the logits' and scores' error beside it, and, for TensorRT, measured over predicted
latency; then the TensorRT layer's behaviour (bench/trt_checks.py: non-blocking streams,
embedding slots expiring and never torn under a concurrent encoder, memory back after a
failed open, CUDA graphs equal to plain runs, a corrupt timing cache survived, the
rebuild policy). Everything that cannot run here is listed as skipped with its reason,
so the script also runs, and says so, on a CPU-only machine. Without --model-dir it
exports a random-weight tiny model to a temporary directory (and calibrates nothing:
pass a calibrated model directory for fp16/int8).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from medsam_edge.bench import fidelity
from medsam_edge.bench.runners import SEGMENTER_STAGES
from medsam_edge.bench.timing import latency_stats
from medsam_edge.metrics import rel_err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="model directory (default: export medsam_vit_tiny, random weights)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--frames", type=int, default=3, help="frames per backend (default 3)")
    ap.add_argument("--boxes", type=int, default=4, help="boxes per frame (default 4)")
    ap.add_argument("--iters", type=int, default=10, help="timed repetitions of the first frame (default 10)")
    ap.add_argument("--no-build", action="store_true", help="use existing TensorRT engines only")
    args = ap.parse_args(argv)

    from medsam_edge.bench.runners import backend_runner
    from medsam_edge.export.torch_backend import TorchBackend
    from medsam_edge.info import collect

    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "env": collect()}
    with tempfile.TemporaryDirectory() as tmp:
        md = _model_dir(args.model_dir, Path(tmp), report)
        report["static"] = _static(md)
        frames = _inputs(md, args.frames, args.boxes)
        report["inputs"] = {"frames": len(frames), "boxes_per_frame": args.boxes, "iters": args.iters}
        # info.collect asked torch already: "yes: <GPU name>" where it sees a CUDA device.
        device = "cuda" if report["env"]["torch_cuda"].startswith("yes") else "cpu"
        ref = backend_runner("reference", TorchBackend(md, device=device), md)
        try:
            ref_out = [ref.run(f.image, f.boxes) for f in frames]
            report["reference"] = {"describe": ref.describe, "latency": _latency(ref, frames[0], args.iters),
                                   "masks": _mask_shares(ref_out)}
            report["backends"] = {}
            for name, opener in _candidates(md, device, not args.no_build, report):
                report["backends"][name] = _check(name, opener, md, frames, ref, ref_out, report["reference"],
                                                  args.iters)
        finally:
            ref.close()
        _measured_over_predicted(report)
        report["tensorrt_checks"] = _tensorrt_checks(md, report, frames)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for name, s in report["static"].items():
        print(f"{name:28s} {'ok' if not s['trt_check'] else 'refused':8s} "
              f"{'; '.join(s['trt_check'][:1]) or _shares(s['plan'])}")
    for name, r in {**report["backends"], **report["tensorrt_checks"]}.items():
        extra = r.get("reason") or r.get("error") or (_summary(r) if "fidelity" in r else _figures(r))
        print(f"{name:28s} {r['status']:8s} {extra}")
    print(f"wrote {args.out}")
    return 0


def _static(md) -> dict:
    """trt_check and the precision plan of every ONNX file in the model directory."""
    from medsam_edge.calibration.plan import model_dir_plan
    from medsam_edge.engines import engine_manifest as em
    from medsam_edge.engines.trt_check import problems

    shapes = em.profiles(md)
    out = {}
    for name, p in model_dir_plan(md.path).items():
        part = "decoder" if name.startswith("decoder") else "encoder"
        # encoder.int8dyn.onnx is onnxruntime-CPU-only by design (MatMulInteger): not TensorRT's.
        out[name] = {"trt_check": [] if "int8dyn" in name else problems(md.path / name, shapes[part]),
                     "plan": {k: p[k] for k in ("share", "total_flops", "other_ops", "uncounted_nodes")},
                     "predicted": p["predicted"]}
    return out

def _shares(p: dict) -> str:
    return ", ".join(f"{t} {100 * v:.1f}%" for t, v in p["share"].items() if v) + f" of {p['total_flops'] / 1e9:.1f} GFLOP"


def _figures(r: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("status", "trace", "log"))[:160]


def _gpu_key(name: str) -> str | None:
    """This GPU's row in plan.GPUS (H200 computes at H100's rates), or None."""
    n = name.upper()
    return next((k for k, pat in (("H100", "H100"), ("H100", "H200"), ("A100", "A100"), ("Orin", "ORIN"))
                 if pat in n), None)


def _measured_over_predicted(report: dict) -> None:
    """Beside each TensorRT row: the plan's predicted encoder time for this GPU, and the ratio."""
    gpu = (report.get("tensorrt_build") or {}).get("gpu")
    key = _gpu_key(gpu or "")
    for name, r in report["backends"].items():
        if r.get("status") != "ok" or not name.startswith("tensorrt-") or key is None:
            continue
        precision = name.split("-")[1]
        enc = next((s for f, s in report["static"].items()
                    if f == ("encoder.onnx" if precision == "fp32" else f"encoder.{precision}.onnx")), None)
        if enc:
            predicted = enc["predicted"][key]["total_ms"]
            r["predicted_encode_ms"] = predicted
            r["measured_over_predicted"] = round(r["latency"]["encode"]["p50_ms"] / predicted, 3)


def _tensorrt_checks(md, report: dict, frames) -> dict:
    if (report.get("tensorrt_build") or {}).get("status") != "ok":
        why = (report.get("tensorrt_build") or {}).get("reason") or "no TensorRT engines were built"
        return {"tensorrt-layer": {"status": "skipped", "reason": why}}
    from medsam_edge.bench.trt_checks import run_all
    from medsam_edge.runtime.geometry import boxes_to_model
    from medsam_edge.runtime.segmenter import OpenCVProcessing

    # The layer's checks drive the backend itself: preprocessed tensors and model-frame boxes.
    prepared = [OpenCVProcessing(md.preprocess).prepare(f.image) for f in frames]
    tensors = [p.tensor for p in prepared]
    boxes = [boxes_to_model(f.boxes, p.original_hw, p.resized_hw) for f, p in zip(frames, prepared)]
    return {f"tensorrt-{k}": v for k, v in run_all(md, "fp32", tensors, boxes).items()}


def _model_dir(path: Path | None, tmp: Path, report: dict):
    from medsam_edge.manifest import load_model_dir

    if path is None:
        from medsam_edge.export.exporter import export_model

        path = tmp / "medsam_vit_tiny"
        export_model("medsam_vit_tiny", path, random_init=True, quiet=True, parity=False)
    md = load_model_dir(path)
    report["model"] = {"dir": str(path), "model_id": md.model_id, "input_size": md.manifest["input_size"]}
    return md


def _inputs(md, n_frames: int, n_boxes: int) -> list:
    """Smooth, seeded RGB pictures (3:4, the model's input side wide) with boxes inside them."""
    from medsam_edge.bench.frames import BenchFrame

    rng = np.random.default_rng(0)
    w = int(md.manifest["input_size"])
    h = w * 3 // 4
    yy, xx = np.mgrid[0:h, 0:w] / w
    frames = []
    for k in range(n_frames):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.25)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = np.clip(blob[..., None] * rng.uniform(0.6, 1.0, 3) + rng.normal(0, 0.05, (h, w, 3)), 0, 1)
        lo = rng.uniform(0.05, 0.5, (n_boxes, 2)) * (w, h)
        boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.45, (n_boxes, 2)) * (w, h)], 1)
        frames.append(BenchFrame((img * 255).astype(np.uint8), boxes.astype(np.float32), "synthetic", k, 0.0))
    return frames


def _candidates(md, device: str, build: bool, report: dict):
    """(name, opener) per backend; an opener returns a backend or raises _Skip."""
    from medsam_edge.engines.select import open_backend, find_backends

    found = {a.name: a for a in find_backends()}
    report["backends_found"] = {a.name: {"available": a.available, "reason": a.reason} for a in found.values()}
    precisions = [p for p in ("fp32", "fp16", "int8") if md.onnx("encoder", p).is_file()]
    report["precisions_found"] = precisions

    def torch_fast(compile: bool):
        def open_():
            if device != "cuda":
                raise _Skip("torch sees no CUDA device: the fast path is CUDA-only (no CUDA here)")
            from medsam_edge.export.torch_backend import TorchBackend

            return TorchBackend(md, device="cuda", fast=True, compile=compile)

        return open_

    yield "torch-cuda-fp16-sdpa", torch_fast(False)
    yield "torch-cuda-fp16-sdpa-compiled", torch_fast(True)
    for name in ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt"):
        for p in precisions:
            yield f"{name}-{p}", _ort_opener(md, name, p, found[name], open_backend)
    if not found["tensorrt"].available:
        report["tensorrt_build"] = {"status": "skipped", "reason": found["tensorrt"].reason}
        yield "tensorrt", _skipper(found["tensorrt"].reason)
        return
    report["tensorrt_build"] = _build(md, precisions) if build else {"status": "skipped", "reason": "--no-build"}
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend

    for p in precisions:
        for graphs in (False, True):
            name = f"tensorrt-{p}" + ("-cudagraph" if graphs else "")
            yield name, (lambda p=p, g=graphs: TensorrtBackend(md, p, cuda_graphs=g))


def _ort_opener(md, name, precision, availability, open_backend):
    def open_():
        if not availability.available:
            raise _Skip(availability.reason)
        return open_backend(md, name, precision)

    return open_


def _skipper(reason: str):
    def open_():
        raise _Skip(reason)

    return open_


def _build(md, precisions) -> dict:
    from medsam_edge.engines.cuda import current_gpu
    from medsam_edge.engines.trt_build import build_engines

    t0 = time.perf_counter()
    try:
        out = build_engines(md, tuple(precisions), progress=False)  # the static check runs first
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}"}
    return {"status": "ok", "dir": str(out), "seconds": round(time.perf_counter() - t0, 1), "gpu": current_gpu().name}


class _Skip(Exception):
    pass


def _check(name: str, opener, md, frames, ref, ref_out, ref_report, iters) -> dict:
    from medsam_edge.bench.runners import backend_runner

    try:
        runner = backend_runner(name, opener(), md)
    except _Skip as e:
        return {"status": "skipped", "reason": str(e)}
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    try:
        out = [runner.run(f.image, f.boxes) for f in frames]
        lat = _latency(runner, frames[0], iters)
        ratio = {k: round(ref_report["latency"][k]["p50_ms"] / v["p50_ms"], 3) for k, v in lat.items()
                 if v["p50_ms"] > 0}
        fid = _fidelity(ref, ref_out, runner, out)
        return {"status": "ok", "describe": runner.describe, "latency": lat, "speedup_vs_reference": ratio,
                "fidelity": fid, "flagged": fidelity.verdict(fid, ratio.get("encode"))}
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    finally:
        runner.close()


def _latency(runner, frame, iters: int) -> dict:
    """Per Segmenter stage over `iters` runs of one frame after a warm-up run (allocation,
    autotuning, graph capture): bench.timing's statistics, in ms."""
    runner.run(frame.image, frame.boxes)
    runs = [runner.run(frame.image, frame.boxes).stages_ms for _ in range(max(1, iters))]
    return {stage: {f"{k}_ms" if k != "n" else k: v for k, v in latency_stats([r[stage] for r in runs]).items()}
            for stage in SEGMENTER_STAGES}


def _fidelity(ref, ref_out, runner, out) -> dict:
    """bench.fidelity's summary of the postprocessed masks and embeddings against the
    reference's, with the logits' and scores' largest error beside it."""
    per_frame = [fidelity.compare(o.masks, r.masks, runner.to_numpy(o.embedding), ref.to_numpy(r.embedding))
                 for o, r in zip(out, ref_out)]
    return {**fidelity.aggregate(per_frame),
            "logits_rel_err_max": max(rel_err(o.logits, r.logits) for o, r in zip(out, ref_out)),
            "score_abs_err_max": max(float(np.abs(o.scores - r.scores).max(initial=0.0)) for o, r in zip(out, ref_out))}


def _mask_shares(outputs) -> dict:
    """How much of the frame the reference's masks cover: a Dice between empty (or full)
    masks says nothing about the arithmetic."""
    shares = [float(m.mean()) for o in outputs for m in o.masks]
    return {"count": len(shares), "nonempty": sum(v > 0 for v in shares), "share_min": min(shares, default=None),
            "share_max": max(shares, default=None)}


def _summary(r: dict) -> str:
    f, lat = r["fidelity"], r["latency"]
    return (f"encode {lat['encode']['p50_ms']:.1f} ms, decode {lat['decode']['p50_ms']:.1f} ms, "
            f"Dice min {f['dice_min']:.4f}, cosine min {f.get('cosine_min', float('nan')):.6f}")


if __name__ == "__main__":
    sys.exit(main())
