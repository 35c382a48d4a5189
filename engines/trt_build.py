"""Build TensorRT engines from the model directory's ONNX files (TensorRT 10 and 11).

The network is strongly typed: each tensor's type comes from the ONNX, which already
carries the precision (FP32, FP16 mixed, INT8 Q/DQ: see calibration/). No precision
builder flags are used: TensorRT 11 removed them, and TensorRT 10 on Jetson builds the
same strongly typed files. `tensorrt` is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from medsam_edge.atomic import write_bytes
from medsam_edge.contract import POINTS_MAX, DECODER_BATCH_MAX
from medsam_edge.engines import engine_manifest as em
from medsam_edge.errors import InputError, first_line
from medsam_edge.manifest import ModelDir, load_model_dir


def build_engines(
    model_dir: str | Path | ModelDir,
    precisions: tuple[str, ...] = ("fp32",),
    workspace_gib: float = 4.0,
    max_prompts: int = DECODER_BATCH_MAX,
    max_points: int = POINTS_MAX,
    timing_cache: bool = True,
    progress: bool = True,
    opt_prompts: int | None = None,
    opt_points: int | None = None,
    check: bool = True,
) -> Path:
    """Build encoder/decoder plans for each precision; returns the engine directory.

    opt_prompts / opt_points: the shape TensorRT tunes the decoder for (default the
    contract's: one box). check: run the static TensorRT check (trt_check) first.
    """
    md = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
    if workspace_gib <= 0:
        raise InputError(f"--workspace {workspace_gib}: expected a positive size in GiB")
    shapes = em.profiles(md, max_prompts, max_points, opt_prompts, opt_points)
    # Every input file is checked before TensorRT spends minutes on the first one.
    jobs = [(p, part, em.onnx_for(md, part, p)) for p in precisions for part in em.PARTS]
    if check:
        from medsam_edge.engines.trt_check import check_build_inputs

        check_build_inputs(md, precisions, shapes)
    try:
        import tensorrt as trt
    except Exception as e:  # the PyPI stub fails in its own ways, not only ImportError
        raise InputError(f"TensorRT does not import here ({first_line(e)}); build on the GPU machine") from None
    from medsam_edge.engines.cuda import current_gpu

    gpu = current_gpu()
    out = em.engine_dir(md.path, gpu, trt.__version__)
    manifest = em.load(out) or em.new_manifest(md, gpu, trt.__version__)
    cache_path = out / em.TIMING_CACHE
    for precision, part, onnx in jobs:
        plan_path = out / em.plan_name(part, precision)
        cache = cache_path.read_bytes() if timing_cache and cache_path.is_file() else b""
        t0 = time.perf_counter()
        with _ticker(f"building {plan_path.name} from {onnx.name}", progress) as tick:
            plan, cache = _build_one(onnx, part, shapes[part], workspace_gib, cache, tick, md, cache_path)
        seconds = time.perf_counter() - t0
        # Plan first, manifest second: a crash in between leaves a plan whose SHA-256 the
        # manifest does not know, which find_engines() reports as stale.
        write_bytes(plan_path, plan)
        if timing_cache and cache:
            write_bytes(cache_path, cache)
        em.record(manifest, precision, part, onnx, plan_path, shapes[part], seconds)
        em.save(out, manifest)
    return out


def network_flags(trt_version: str, strongly_typed_bit: int | None) -> int:
    """create_network() flags: STRONGLY_TYPED on TensorRT 10; nothing on 11+, where strong
    typing is always on and the flag is deprecated and ignored. (EXPLICIT_BATCH has been
    the default and deprecated since 10.0.)"""
    major = int(trt_version.split(".")[0])
    if major >= 11 or strongly_typed_bit is None:
        return 0
    return 1 << strongly_typed_bit


def make_logger(trt):
    """A TensorRT logger that keeps errors for one-line messages and stays quiet otherwise."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))

    return _Logger()


def errors_line(errors: list[str], limit: int = 300) -> str:
    """Several TensorRT error messages as one short line."""
    text = " | ".join(" ".join(e.split()) for e in dict.fromkeys(errors)) or "no error message from TensorRT"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _build_one(onnx: Path, part: str, shapes: dict, workspace_gib: float, cache: bytes, tick,
               md: ModelDir, cache_path: Path) -> tuple[bytes, bytes]:
    import tensorrt as trt

    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(network_flags(trt.__version__, None if flag is None else int(flag)))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): it finds external weight files next to the ONNX.
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] + logger.errors
        raise InputError(f"{onnx}: TensorRT cannot parse it ({errors_line(errors)}); export it again")
    from medsam_edge.engines.cuda import dims

    inputs = {network.get_input(i).name: dims(network.get_input(i).shape) for i in range(network.num_inputs)}
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    em.check_io(onnx, part, int(md.manifest.get("input_size") or md.preprocess.size), inputs, outputs)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    # TF32 is on by default; it would change FP32 maths behind the ONNX's back.
    with contextlib.suppress(AttributeError):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, trt.Dims(s["min"]), trt.Dims(s["opt"]), trt.Dims(s["max"]))
    config.add_optimization_profile(profile)
    why = use_timing_cache(config, cache)
    if why:
        _warn(f"{cache_path}: timing cache not used ({why}); building with a fresh one, which replaces it")
    monitor = _monitor(trt, tick)
    if monitor is not None:
        config.progress_monitor = monitor
    try:
        plan = builder.build_serialized_network(network, config)
    except Exception as e:  # some versions raise instead of returning None
        logger.errors.append(first_line(e))
        plan = None
    if plan is None:
        text = errors_line(logger.errors)
        hint = "; free GPU memory or lower --workspace" if "memory" in text.lower() else ""
        raise InputError(f"{onnx}: TensorRT could not build an engine ({text}){hint}")
    timing = config.get_timing_cache()
    return bytes(plan), (bytes(timing.serialize()) if timing is not None else b"")


def use_timing_cache(config, data: bytes) -> str | None:
    """Give the builder config a timing cache from `data` (a file's bytes, or b"" for a
    fresh one). A corrupt, truncated or foreign cache is not fatal: TensorRT raises or
    refuses it, a fresh cache is used instead and the reason returned (None: used as is)."""
    why = None
    try:
        cache = config.create_timing_cache(data)
        if cache is None:
            why = "TensorRT could not read it"
        elif not config.set_timing_cache(cache, ignore_mismatch=False):
            why = "it was made on another GPU or TensorRT version"
    except Exception as e:  # a corrupt cache raises from the bindings (type varies by version)
        why = f"unreadable: {first_line(e)}"
    if why and data:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return why if data else None


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def _monitor(trt, tick):
    """An IProgressMonitor that feeds the phase names to the progress line (TensorRT >= 10)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None or tick is None:
        return None

    class _Monitor(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.phases: dict[str, tuple[int, int]] = {}

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            self.phases[phase_name] = (0, num_steps)
            self._show()

        def step_complete(self, phase_name, step) -> bool:
            if phase_name in self.phases:
                self.phases[phase_name] = (step + 1, self.phases[phase_name][1])
            self._show()
            return True  # False would cancel the build

        def phase_finish(self, phase_name) -> None:
            self.phases.pop(phase_name, None)
            self._show()

        def _show(self) -> None:
            # Called from TensorRT's threads; the ticker only reads this string.
            tick.phase = ", ".join(f"{n} {a}/{b}" for n, (a, b) in list(self.phases.items())[-2:])

    return _Monitor()


class _Tick:
    phase = ""


@contextlib.contextmanager
def _ticker(label: str, enabled: bool, stream=None) -> Iterator[_Tick | None]:
    """One progress line on stderr, rewritten every second while TensorRT works."""
    if not enabled:
        yield None
        return
    stream = stream or sys.stderr
    tick, done, t0 = _Tick(), threading.Event(), time.perf_counter()

    def show(end: str = "") -> None:
        line = f"\r{label} ... {time.perf_counter() - t0:.0f} s {tick.phase}"[:160]
        print(line.ljust(100), end=end, file=stream, flush=True)

    def run() -> None:
        while not done.wait(1.0):
            show()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield tick
    finally:
        done.set()
        thread.join()
        tick.phase = ""
        show("\n")
