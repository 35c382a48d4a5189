"""Which backends exist here, and opening one by name (or the best with "auto").

Probing never imports a heavy library beyond what is needed to answer; the reason a
backend is missing is kept so `medsam-edge info` and the logs can say it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from medsam_edge.engines.base import Backend
from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

# "auto" tries these in order: native TensorRT, then onnxruntime's TensorRT and CUDA
# providers, then the CPU, which always works.
AUTO_ORDER = ("tensorrt", "onnxruntime-trt", "onnxruntime-cuda", "onnxruntime-cpu")
NAMES = AUTO_ORDER


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    reason: str = ""


def probe() -> list[Availability]:
    out = []
    ort_providers: list[str] = []
    ort_reason = ""
    try:
        import onnxruntime as ort

        ort_providers = ort.get_available_providers()
    except ImportError as e:
        ort_reason = f"onnxruntime does not import ({e})"
    if importlib.util.find_spec("tensorrt") is None:
        out.append(Availability("tensorrt", False, "the tensorrt Python package is not installed"))
    else:
        from medsam_edge.engines import tensorrt_backend

        ok, why = tensorrt_backend.usable()
        out.append(Availability("tensorrt", ok, why))
    for name, provider in (
        ("onnxruntime-trt", "TensorrtExecutionProvider"),
        ("onnxruntime-cuda", "CUDAExecutionProvider"),
        ("onnxruntime-cpu", "CPUExecutionProvider"),
    ):
        if ort_reason:
            out.append(Availability(name, False, ort_reason))
        elif provider in ort_providers:
            out.append(Availability(name, True))
        else:
            out.append(Availability(name, False, f"onnxruntime has no {provider} (install onnxruntime-gpu)"))
    return out


def resolve(name: str) -> str:
    """'auto' -> the first available backend; a named one is checked and returned."""
    found = {a.name: a for a in probe()}
    if name == "auto":
        for n in AUTO_ORDER:
            if found[n].available:
                return n
        raise InputError("no backend is available (onnxruntime does not import); pip install onnxruntime")
    if name not in found:
        raise InputError(f"unknown backend {name!r}; choose auto or one of {', '.join(NAMES)}")
    if not found[name].available:
        raise InputError(f"backend {name} is not available here: {found[name].reason}")
    return name


def open_backend(model_dir, name: str = "auto", precision: str = "fp32", threads: int | None = None,
                 decoder_threads: int | None = None, release_memory: bool = False) -> Backend:
    """Open `name` (or the best available) on a model directory; the log says what ran.

    threads / decoder_threads: CPU threads of onnxruntime's encoder / decoder sessions
    (decoder_threads None: the same as threads; both None: onnxruntime's default).
    release_memory: onnxruntime gives the encoder's working memory back after each call.
    """
    from medsam_edge.manifest import ModelDir, load_model_dir

    md = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
    chosen = resolve(name)
    encoder = md.onnx("encoder", precision)
    if not encoder.is_file():
        raise InputError(
            f"{encoder}: no {precision} encoder in {md.path}; run `medsam-edge calibrate` or choose --precision fp32"
        )
    # The decoder is small and stays FP32 unless a reduced-precision one was written.
    decoder = md.onnx("decoder", precision)
    decoder = decoder if decoder.is_file() else md.onnx("decoder")
    if chosen == "tensorrt":
        from medsam_edge.engines.tensorrt_backend import TensorrtBackend

        backend: Backend = TensorrtBackend(md, precision)
    else:
        from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend

        backend = OnnxruntimeBackend(
            encoder, decoder, chosen, precision, threads=threads, cache_dir=md.path / "engines" / "ort_trt_cache",
            decoder_threads=decoder_threads, release_memory=release_memory, input_size=md.preprocess.size,
        )
    log.info("backend %s (%s, %s) for %s%s", backend.name, backend.device, backend.precision, md.path,
             f", threads {backend.describe()['threads']}" if getattr(backend, "threads", None) else "")
    return backend
