"""Which backends exist here, and opening one by name (or the best with "auto").

Probing never imports a heavy library beyond what is needed to answer; the reason a
backend is missing is kept so `medsam-edge info` and the logs can say it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from medsam_edge.contract import DECODER_BATCH_MAX, POINTS_MAX
from medsam_edge.engines.base import Backend
from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

# "auto" tries these in order: native TensorRT, then onnxruntime's TensorRT and CUDA
# providers, then the CPU, which always works.
AUTO_ORDER = ("tensorrt", "onnxruntime-trt", "onnxruntime-cuda", "onnxruntime-cpu", "openvino-cpu")
# Precisions for which "auto" tries OpenVINO before onnxruntime's CPU provider: it measured
# faster there at the same fidelity (figures: docs/decisions.md#openvino-first).
OPENVINO_FIRST = frozenset({"bf16", "fp16"})


def auto_order(precision: str | None = None) -> tuple[str, ...]:
    """The order "auto" tries the backends in for `precision`."""
    if precision not in OPENVINO_FIRST:
        return AUTO_ORDER
    cpu = ("openvino-cpu", "onnxruntime-cpu")
    return tuple(n for n in AUTO_ORDER if n not in cpu) + cpu

# --- TensorRT rebuild policy -------------------------------------------------------
# What to do when a model directory's TensorRT engines are missing or stale here (another
# GPU, another TensorRT, changed ONNX, corrupt plan). The default is "never": opening a
# backend on a cart must take seconds and do what it did yesterday; a build takes minutes
# of the whole GPU (and GBs of its memory) at the moment someone starts scanning. Builds
# happen when asked: `medsam-edge build`, or open_backend(rebuild="if-stale"/"always").
# With "never", backend "auto" falls back to the next backend and the log says so and how
# to build; a backend named "tensorrt" refuses with the same message.
REBUILD_POLICIES = ("never", "if-stale", "always")
DEFAULT_REBUILD = "never"


def rebuild_decision(state: str, policy: str) -> str:
    """'use', 'build' or 'refuse' for engines in `state` ('usable', 'stale', 'missing')."""
    if policy not in REBUILD_POLICIES:
        raise InputError(f"rebuild {policy!r}: expected one of {', '.join(REBUILD_POLICIES)}")
    if policy == "always":
        return "build"
    if state == "usable":
        return "use"
    return "build" if policy == "if-stale" else "refuse"


def _open_tensorrt(md, precision: str, policy: str, fall_back: bool) -> Backend | None:
    """The TensorRT backend after the rebuild decision, logged; None: fall back (auto only)."""
    from medsam_edge.engines import engine_manifest as em
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend
    from medsam_edge.engines.tensorrt_status import StaleEngines, engine_status

    status = engine_status(md, precision)
    decision = rebuild_decision(status.state, policy)
    rebuilt = None
    if decision == "refuse":
        hint = f"build them with `medsam-edge build {md.path} --precision {precision}` or open with rebuild='if-stale'"
        if fall_back:
            log.warning("tensorrt: %s; not rebuilt (rebuild policy never): falling back to the next backend; %s",
                        status.message(), hint)
            return None
        raise StaleEngines(f"{md.path}: {status.message()}; {hint}", status)
    if decision == "build":
        from medsam_edge.engines.trt_build import build_engines

        log.warning("tensorrt: %s; rebuilding in %s (rebuild policy %s)",
                    status.message() if not status.usable else f"{precision} engines usable", status.path, policy)
        old = ((status.manifest or {}).get("engines", {}).get(precision) or {}).get("decoder") or {}
        top = em.profile_maxima(old["profile"]) if old.get("profile") else {}
        # A rebuild keeps the profile the engines had (the user may have built for more prompts).
        build_engines(md, (precision,), max_prompts=top.get("num_prompts", DECODER_BATCH_MAX),
                      max_points=top.get("num_points", POINTS_MAX))
        rebuilt = status.message() if not status.usable else f"rebuilt by policy {policy}"
    else:
        log.info("tensorrt: %s engines usable in %s; not rebuilt (rebuild policy %s)", precision, status.path, policy)
    backend = TensorrtBackend(md, precision)
    backend.rebuilt = rebuilt
    return backend


def _available(name: str) -> bool:
    return next(a for a in find_backends() if a.name == name).available


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    reason: str = ""


def find_backends() -> list[Availability]:
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
        from medsam_edge.engines import tensorrt_status

        ok, why = tensorrt_status.usable()
        out.append(Availability("tensorrt", ok, why))
    for name, provider in (
        ("onnxruntime-trt", "TensorrtExecutionProvider"),
        ("onnxruntime-cuda", "CUDAExecutionProvider"),
        ("onnxruntime-cpu", "CPUExecutionProvider"),
    ):
        if ort_reason:
            out.append(Availability(name, False, ort_reason))
        elif provider in ort_providers:
            # Listed is not usable: onnxruntime drops a provider it cannot initialise silently.
            from medsam_edge.engines.onnxruntime_backend import provider_problem

            why = provider_problem(provider)
            out.append(Availability(name, why is None, why or ""))
        else:
            out.append(Availability(name, False, f"onnxruntime has no {provider} (install onnxruntime-gpu)"))
    out.append(_probe_openvino())
    return sorted(out, key=lambda a: AUTO_ORDER.index(a.name))


def _probe_openvino() -> Availability:
    # find_spec first: where openvino is not installed, nothing is imported to say so.
    if importlib.util.find_spec("openvino") is None:
        return Availability("openvino-cpu", False, "the openvino Python package is not installed "
                                                   "(pip install 'medsam-edge[openvino]')")
    from medsam_edge.engines import openvino_backend

    return Availability("openvino-cpu", *openvino_backend.usable())


def _family(name: str) -> str:
    """Backend name -> its engine family in contract.PRECISIONS' runs_on ("openvino-cpu" -> "openvino")."""
    return name.split("-")[0]


def resolve(name: str, precision: str | None = None) -> str:
    """'auto' -> the first available backend (that runs `precision`, when given); a named
    one is checked and returned."""
    from medsam_edge.contract import PRECISIONS

    if name.startswith("triton://"):  # a server, checked when it is opened (engines/triton_backend.py)
        return name
    found = {a.name: a for a in find_backends()}
    if name == "auto":
        runs = PRECISIONS[precision].runs_on if precision in PRECISIONS else None
        for n in auto_order(precision):
            if found[n].available and (runs is None or _family(n) in runs):
                return n
        if runs is not None and any(found[n].available for n in AUTO_ORDER):
            raise InputError(f"--precision {precision}: no backend here runs it (it needs {', '.join(runs)}); "
                             + "; ".join(f"{n}: {found[n].reason}" for n in AUTO_ORDER
                                         if _family(n) in runs and not found[n].available))
        raise InputError("no backend is available (onnxruntime does not import); pip install onnxruntime")
    if name not in found:
        raise InputError(f"unknown backend {name!r}; choose auto or one of {', '.join(AUTO_ORDER)}")
    if not found[name].available:
        raise InputError(f"backend {name} is not available here: {found[name].reason}")
    return name


def open_backend(model_dir, name: str = "auto", precision: str = "fp32", threads: int | None = None,
                 decoder_threads: int | None = None, release_memory: bool = False,
                 rebuild: str = DEFAULT_REBUILD, cpu_flags=None) -> Backend:
    """Open `name` (or the best available) on a model directory; the log says what ran.
    precision "auto": the fastest precision and backend here whose fidelity the model
    directory's report says meets its target (engines/auto_precision.py; the log says why,
    and describe() carries it as "precision_choice"). cpu_flags: the CPU's flags for that
    choice (None: read here).
    The files are `precision`'s in the model directory, opened by engines.loaders.open_files
    (TensorRT's engines and a Triton server here).

    threads / decoder_threads: CPU threads of the encoder / decoder (onnxruntime sessions,
    OpenVINO compiled models; decoder_threads None: the same as threads; both None: the
    runtime's default).
    release_memory: onnxruntime gives the encoder's working memory back after each call.
    rebuild: TensorRT engines missing or stale for this GPU/TensorRT: "never" refuses (or,
    with name "auto", falls back to the next backend), "if-stale" builds them first,
    "always" builds them anyway (see rebuild_decision).
    """
    from medsam_edge.contract import PRECISIONS
    from medsam_edge.manifest import ModelDir, load_model_dir

    md = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
    if rebuild not in REBUILD_POLICIES:
        raise InputError(f"rebuild {rebuild!r}: expected one of {', '.join(REBUILD_POLICIES)}")
    if precision == "auto":
        return _open_auto(md, name, threads, decoder_threads, release_memory, rebuild, cpu_flags)
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: expected auto or one of {', '.join(PRECISIONS)}")
    chosen = resolve(name, precision)
    if chosen.startswith("triton://"):
        from medsam_edge.engines.triton_backend import TritonBackend

        remote = TritonBackend(chosen, md, precision)
        log.info("backend %s: %s on Triton %s at %s", chosen, remote.describe()["model_id"],
                 remote.server_version, remote.url)
        return remote
    if precision in PRECISIONS and _family(chosen) not in PRECISIONS[precision].runs_on:
        raise InputError(f"--precision {precision} runs on {', '.join(PRECISIONS[precision].runs_on)}, "
                         f"not on {chosen}; choose another --backend or --precision")
    encoder = md.onnx("encoder", precision)
    if not encoder.is_file():
        raise InputError(
            f"{encoder}: no {precision} encoder in {md.path}; run `medsam-edge calibrate` or choose --precision fp32"
        )
    # The decoder is small and stays FP32 unless a reduced-precision one was written
    # (the contract lists decoder.onnx last among each precision's decoders).
    decoder = md.onnx("decoder", precision)
    backend: Backend | None = None
    if chosen == "tensorrt":
        backend = _open_tensorrt(md, precision, rebuild, fall_back=name == "auto")
        if backend is None:  # stale engines and rebuild "never": the next backend that runs this precision
            runs = PRECISIONS[precision].runs_on
            chosen = next(n for n in auto_order(precision) if n != "tensorrt" and _available(n)
                          and _family(n) in runs)
    if backend is None:
        from medsam_edge.engines.loaders import open_files

        backend = open_files(encoder, decoder, chosen, precision, threads, decoder_threads,
                             release_memory=release_memory, model_dir=md)
    log.info("backend %s%s (%s, %s) for %s%s", backend.name, " (auto)" if name == "auto" else "",
             backend.device, backend.precision, md.path,
             f", threads {backend.describe()['threads']}" if getattr(backend, "threads", None) else "")
    return backend


def _open_auto(md, name: str, threads, decoder_threads, release_memory: bool, rebuild: str, cpu_flags) -> Backend:
    """precision auto: the choice, logged with its reason; a chosen bf16 that does not open
    here (a plan that no longer fits the file) falls back to fp32 and the log says why."""
    from medsam_edge.engines.auto_precision import Choice, choose

    usable = {a.name for a in find_backends() if a.available}
    choice = choose(md, usable, name, "detect" if cpu_flags is None else cpu_flags)
    log.info("precision auto: %s on %s: %s", choice.precision, choice.backend, choice.reason)
    args = (threads, decoder_threads, release_memory, rebuild)
    try:
        backend = open_backend(md, choice.backend if name == "auto" else name, choice.precision, *args)
    except InputError as e:
        if choice.precision == "fp32":
            raise
        log.warning("precision auto: %s did not open (%s); fp32 instead", choice.precision, e)
        choice = Choice(name, "fp32", f"{choice.reason}; it did not open here ({e}); fp32")
        backend = open_backend(md, name, "fp32", *args)
    backend.precision_choice = f"auto: {choice.reason}"
    return backend
