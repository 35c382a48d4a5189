"""One call on a GPU machine: the whole GPU layer, against the FP32 PyTorch reference.

    python -m medsam_edge.bench.gpu_check [--model-dir DIR] [--out gpu_check.json]

In order: which backends import and which are present but unusable (and why); the
static TensorRT check and the precision plan of every ONNX file, with predicted latency
on this GPU; TensorRT engines built (the static check first); then each backend's
encoder and decoder timed on the same frames and boxes as the reference, with fidelity
(embedding cosine, logits error, mask Dice, score error) and, for TensorRT, measured
over predicted latency; then the TensorRT layer's behaviour (bench/trt_checks.py:
non-blocking streams, embedding slots expiring and never torn under a concurrent
encoder, memory back after a failed open, CUDA graphs equal to plain runs, a corrupt
timing cache survived, the rebuild policy). Everything that cannot run here is listed
as skipped with its reason, so the script also runs, and says so, on a CPU-only
machine. Without --model-dir it exports a random-weight tiny model to a temporary
directory (and calibrates nothing: pass a calibrated model directory for fp16/int8).
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

from medsam_edge.contract import box_tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="model directory (default: export medsam_vit_tiny, random weights)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--frames", type=int, default=3, help="frames per backend (default 3)")
    ap.add_argument("--boxes", type=int, default=4, help="boxes per decoder call (default 4)")
    ap.add_argument("--iters", type=int, default=10, help="timed repetitions per stage (default 10)")
    ap.add_argument("--no-build", action="store_true", help="use existing TensorRT engines only")
    args = ap.parse_args(argv)

    from medsam_edge.info import collect

    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "env": collect()}
    with tempfile.TemporaryDirectory() as tmp:
        md = _model_dir(args.model_dir, Path(tmp), report)
        report["static"] = _static(md)
        frames, boxes = _inputs(md, args.frames, args.boxes)
        report["inputs"] = {"frames": len(frames), "boxes_per_frame": args.boxes, "iters": args.iters}
        device = "cuda" if _torch_cuda() else "cpu"
        from medsam_edge.export.torch_backend import TorchBackend

        ref = TorchBackend(md, device=device)
        ref_out = _run(ref, frames, boxes)
        report["reference"] = {"describe": ref.describe(), "latency": _latency(ref, frames[0], boxes[0], args.iters)}
        report["backends"] = {}
        for name, opener in _candidates(md, device, not args.no_build, report):
            report["backends"][name] = _check(opener, frames, boxes, ref_out, report["reference"], args.iters)
        _measured_over_predicted(report)
        report["tensorrt_checks"] = _tensorrt_checks(md, report, frames, boxes)
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
    from medsam_edge.calibration.plan import GPUS, plan, predict
    from medsam_edge.engines import engine_manifest as em
    from medsam_edge.engines.trt_check import problems

    shapes = em.profiles(md)
    out = {}
    for f in sorted(md.path.glob("*.onnx")):
        part = "decoder" if f.name.startswith("decoder") else "encoder"
        p = plan(f)
        # encoder.int8dyn.onnx is onnxruntime-CPU-only by design (MatMulInteger): not TensorRT's.
        out[f.name] = {"trt_check": [] if "int8dyn" in f.name else problems(f, shapes[part]),
                       "plan": {k: p[k] for k in ("share", "total_flops", "other_ops", "uncounted_nodes")},
                       "predicted": {g: predict(p, g) for g in GPUS}}
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


def _tensorrt_checks(md, report: dict, frames, boxes) -> dict:
    if (report.get("tensorrt_build") or {}).get("status") != "ok":
        why = (report.get("tensorrt_build") or {}).get("reason") or "no TensorRT engines were built"
        return {"tensorrt-layer": {"status": "skipped", "reason": why}}
    from medsam_edge.bench.trt_checks import run_all

    return {f"tensorrt-{k}": v for k, v in run_all(md, "fp32", frames, boxes).items()}


def _model_dir(path: Path | None, tmp: Path, report: dict):
    from medsam_edge.manifest import load_model_dir

    if path is None:
        from medsam_edge.export.exporter import export_model

        path = tmp / "medsam_vit_tiny"
        export_model("medsam_vit_tiny", path, random_init=True, quiet=True, parity=False)
    md = load_model_dir(path)
    report["model"] = {"dir": str(path), "model_id": md.model_id, "input_size": md.manifest["input_size"]}
    return md


def _inputs(md, n_frames: int, n_boxes: int) -> tuple[list, list]:
    """Smooth, seeded frames (as preprocessed tensors) and boxes inside them."""
    rng = np.random.default_rng(0)
    s = int(md.manifest["input_size"])
    yy, xx = np.mgrid[0:s, 0:s] / s
    frames, boxes = [], []
    for _ in range(n_frames):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = np.clip(blob[None] * rng.uniform(0.6, 1.0, (3, 1, 1)) + rng.normal(0, 0.05, (3, s, s)), 0, 1)
        frames.append(img[None].astype(np.float32))
        lo = rng.uniform(0.05, 0.5, (n_boxes, 2)) * s
        boxes.append(np.concatenate([lo, lo + rng.uniform(0.1, 0.45, (n_boxes, 2)) * s], 1).astype(np.float32))
    return frames, boxes


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _sync() -> None:
    if _torch_cuda():
        import torch

        torch.cuda.synchronize()


def _candidates(md, device: str, build: bool, report: dict):
    """(name, opener) per backend; an opener returns a backend or raises _Skip."""
    from medsam_edge.engines.select import open_backend, probe

    found = {a.name: a for a in probe()}
    report["probe"] = {a.name: {"available": a.available, "reason": a.reason} for a in found.values()}
    precisions = [p for p in ("fp32", "fp16", "int8") if md.onnx("encoder", p).is_file()]
    report["precisions_found"] = precisions

    def torch_fast(compile: bool):
        def open_():
            if device != "cuda":
                raise _Skip("torch sees no CUDA device: the fast path is CUDA-only")
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


def _check(opener, frames, boxes, ref_out, ref_report, iters) -> dict:
    try:
        backend = opener()
    except _Skip as e:
        return {"status": "skipped", "reason": str(e)}
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    try:
        with backend:
            out = _run(backend, frames, boxes)
            lat = _latency(backend, frames[0], boxes[0], iters)
            ratio = {k: round(ref_report["latency"][k]["p50_ms"] / v["p50_ms"], 3) for k, v in lat.items()}
            return {"status": "ok", "describe": backend.describe(), "latency": lat, "speedup_vs_reference": ratio,
                    "fidelity": _fidelity(ref_out, out)}
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}


def _run(backend, frames, boxes) -> list:
    out = []
    for f, b in zip(frames, boxes):
        emb = backend.encode(f)
        logits, iou = backend.decode(emb, *box_tokens(b))
        out.append((backend.embedding_to_numpy(emb).astype(np.float32), logits, iou))
    return out


def _latency(backend, frame, boxes, iters: int) -> dict:
    def timed(fn) -> dict:
        fn()  # warm-up (allocation, autotuning, graph capture)
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            _sync()
            ts.append((time.perf_counter() - t0) * 1e3)
        return {"p50_ms": round(float(np.percentile(ts, 50)), 3), "p95_ms": round(float(np.percentile(ts, 95)), 3)}

    emb = backend.encode(frame)
    # Decoder first: an engine's embedding handle need not survive many later encode() calls.
    decode = timed(lambda: backend.decode(emb, *box_tokens(boxes)))
    return {"encode": timed(lambda: backend.encode(frame)), "decode": decode}


def _fidelity(ref_out, out) -> dict:
    cos, rel, dice, iou_err = [], [], [], []
    for (re, rl, ri), (e, lo, i) in zip(ref_out, out):
        cos.append(float(np.dot(re.ravel(), e.ravel()) / (np.linalg.norm(re) * np.linalg.norm(e) + 1e-12)))
        rel.append(float(np.abs(rl - lo).max() / (np.abs(rl).max() + 1e-12)))
        for a, b in zip(rl > 0, lo > 0):
            inter, total = np.logical_and(a, b).sum(), a.sum() + b.sum()
            dice.append(1.0 if total == 0 else float(2 * inter / total))
        iou_err.append(float(np.abs(ri - i).max()))
    return {"embedding_cosine_min": min(cos), "logits_rel_err_max": max(rel), "mask_dice_mean": float(np.mean(dice)),
            "mask_dice_min": min(dice), "iou_abs_err_max": max(iou_err)}


def _summary(r: dict) -> str:
    f, lat = r["fidelity"], r["latency"]
    return (f"encode {lat['encode']['p50_ms']:.1f} ms, decode {lat['decode']['p50_ms']:.1f} ms, "
            f"Dice min {f['mask_dice_min']:.4f}, cosine min {f['embedding_cosine_min']:.6f}")


if __name__ == "__main__":
    sys.exit(main())
