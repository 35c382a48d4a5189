"""Where TensorRT engines live, what their manifest records, and whether a set is stale.

Pure Python on purpose (no tensorrt, no CUDA): the layout and the staleness rules are
the part of the TensorRT layer that can be tested on a machine without a GPU.

Layout under a model directory:
    engines/<gpu-name-slug>_sm<major><minor>_trt<version>/
        encoder.<precision>.plan   plain TensorRT plans (no header of ours)
        decoder.<precision>.plan
        timing.cache               TensorRT's tactic timing cache, reused by rebuilds
        manifest.json              everything we know about the plans (this module)
A plan only runs on the GPU model and TensorRT version that built it, hence the name.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from medsam_edge.atomic import write_json
from medsam_edge.contract import (
    AXES, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_OUTPUTS, POINTS_MAX, DECODER_BATCH_MAX, encoder_inputs,
)
from medsam_edge.contract import PRECISIONS as CONTRACT_PRECISIONS
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, sha256_file

FORMAT = "medsam-edge/engine-set"
FORMAT_VERSION = 1
ENGINES_DIR = "engines"
MANIFEST = "manifest.json"
TIMING_CACHE = "timing.cache"
PARTS = ("encoder", "decoder")
# What TensorRT builds: the precisions whose files it runs as written.
PRECISIONS = tuple(k for k, v in CONTRACT_PRECISIONS.items() if "tensorrt" in v.runs_on)
# Decoder buffers are allocated at the maxima; keep them sane.
LIMITS = {"num_prompts": 1024, "num_points": 64}


@dataclass(frozen=True)
class GpuIdentity:
    """What a plan is tied to: the GPU model and its compute capability."""

    name: str
    major: int
    minor: int

    @property
    def sm(self) -> str:
        return f"sm{self.major}{self.minor}"

    def to_json(self) -> dict:
        return {"name": self.name, "compute_capability": f"{self.major}.{self.minor}"}


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (safe as a directory name)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def engine_dir_name(gpu: GpuIdentity, trt_version: str) -> str:
    return f"{slug(gpu.name)}_{gpu.sm}_trt{trt_version}"


def engine_dir(model_dir: Path, gpu: GpuIdentity, trt_version: str) -> Path:
    return Path(model_dir) / ENGINES_DIR / engine_dir_name(gpu, trt_version)


def plan_name(part: str, precision: str) -> str:
    return f"{part}.{precision}.plan"


def onnx_for(md: ModelDir, part: str, precision: str) -> Path:
    """The ONNX an engine is built from: precision lives in the ONNX, not in builder flags.

    The decoder is small and stays FP32 unless a reduced-precision one was written (the
    contract lists decoder.onnx last among every precision's decoders). An INT8 engine
    takes the FP16 decoder where calibration wrote one: under strong typing the FP32
    decoder would run on CUDA cores (TF32 is off), 5x the FP16 one's predicted time.
    """
    if part == "decoder" and precision == "int8" and not md.onnx("decoder", "int8").name.endswith(".int8.onnx"):
        fp16 = md.onnx("decoder", "fp16")
        if fp16.name == "decoder.fp16.onnx":
            return fp16
    path = md.onnx(part, precision)
    if path.is_file():
        return path
    raise InputError(
        f"{path}: no {precision} {part} in {md.path}; run `medsam-edge calibrate {md.path}` to write it, "
        "or build --precision fp32"
    )


def profiles(md: ModelDir, max_prompts: int = DECODER_BATCH_MAX, max_points: int = POINTS_MAX,
             opt_prompts: int | None = None,
             opt_points: int | None = None) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Optimisation profile shapes per part and input, from the contract and the model dir.

    The encoder is fixed at batch 1, S x S (S from the manifest); the decoder's prompt and
    point axes run from the contract's minimum to the given maxima, optimised for
    opt_prompts x opt_points (default the contract's opt, one box: one prompt of two
    tokens; a cart that always tracks several objects tunes for its usual count).
    """
    ranges = {}
    for axis, flag, top, want in (("num_prompts", "--max-prompts", max_prompts, opt_prompts),
                                  ("num_points", "--max-points", max_points, opt_points)):
        low, opt, _ = AXES[axis]
        if not low <= top <= LIMITS[axis]:
            raise InputError(f"{flag} {top}: expected {low}..{LIMITS[axis]}")
        if want is not None and not low <= want <= top:
            raise InputError(f"{flag.replace('max', 'opt')} {want}: expected {low}..{top} (the maximum)")
        ranges[axis] = {"min": low, "opt": min(opt if want is None else want, top), "max": top}
    size = int(md.manifest.get("input_size") or md.preprocess.size)

    def shapes(spec) -> dict[str, list[int]]:
        return {k: [ranges[d][k] if isinstance(d, str) else int(d) for d in spec.shape] for k in ("min", "opt", "max")}

    return {
        "encoder": {t.name: shapes(t) for t in encoder_inputs(size)},
        "decoder": {t.name: shapes(t) for t in DECODER_INPUTS},
    }


def profile_maxima(profile: dict) -> dict[str, int]:
    """{"num_prompts": .., "num_points": ..} that a recorded decoder profile allows."""
    from medsam_edge.contract import POINT_COORDS

    top = profile[POINT_COORDS]["max"]
    return {"num_prompts": int(top[0]), "num_points": int(top[1])}


def check_io(onnx: Path, part: str, size: int, inputs: dict[str, tuple], outputs: list[str]) -> None:
    """Refuse an ONNX whose tensors differ from the contract (dynamic dims: -1, None or a name)."""
    specs_in = encoder_inputs(size) if part == "encoder" else DECODER_INPUTS
    specs_out = ENCODER_OUTPUTS if part == "encoder" else DECODER_OUTPUTS
    problems = []
    for spec in specs_in:
        shape = inputs.get(spec.name)
        if shape is None:
            problems.append(f"input {spec.name!r} missing")
        elif len(shape) != len(spec.shape) or any(
            isinstance(want, int) and isinstance(got, int) and got >= 0 and got != want
            for want, got in zip(spec.shape, shape)
        ):
            problems.append(f"input {spec.name!r} is {list(shape)}, expected {list(spec.shape)}")
    extra = sorted(set(inputs) - {s.name for s in specs_in})
    if extra:
        problems.append(f"unexpected inputs {extra}")
    missing_out = [s.name for s in specs_out if s.name not in outputs]
    if missing_out:
        problems.append(f"outputs {missing_out} missing")
    if problems:
        raise InputError(f"{onnx}: does not match the {part} contract ({'; '.join(problems)}); export it again")


def read_plan(engines: Path, entry: dict) -> bytes:
    """The plan's bytes, refused before TensorRT sees them if size or SHA-256 differ."""
    path = engines / entry["plan"]
    rebuild = f"rebuild it with `medsam-edge build {engines.parent.parent}`"
    if not path.is_file():
        raise InputError(f"{path}: plan file missing; {rebuild}")
    data = path.read_bytes()
    if len(data) != entry["plan_bytes"] or hashlib.sha256(data).hexdigest() != entry["plan_sha256"]:
        raise InputError(
            f"{path}: {len(data)} bytes, the manifest records {entry['plan_bytes']} with another SHA-256 "
            f"(truncated or corrupt); {rebuild}"
        )
    return data


def new_manifest(md: ModelDir, gpu: GpuIdentity, trt_version: str) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": md.model_id,
        "tensorrt": trt_version,
        "gpu": gpu.to_json(),
        "engines": {},
    }


def record(manifest: dict, precision: str, part: str, onnx: Path, plan: Path, profile: dict, seconds: float) -> None:
    """Add one built plan to the manifest (in memory; save() writes it)."""
    manifest["engines"].setdefault(precision, {})[part] = {
        "onnx": onnx.name,
        "onnx_sha256": sha256_file(onnx),
        "plan": plan.name,
        "plan_bytes": plan.stat().st_size,
        "plan_sha256": sha256_file(plan),
        "profile": profile,
        "build_seconds": round(seconds, 2),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save(engines: Path, manifest: dict) -> None:
    write_json(engines / MANIFEST, manifest)


def load(engines: Path) -> dict | None:
    """The manifest of an engine directory, or None if absent or not ours."""
    try:
        m = json.loads((engines / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(m, dict) and m.get("format") == FORMAT and m.get("format_version") == FORMAT_VERSION
    return m if ok else None


@dataclass
class EngineStatus:
    """The verdict on one precision's engines for this GPU and TensorRT version, as data."""

    state: str  # "usable", "stale" or "missing"
    path: Path  # the engine directory for this machine (where a rebuild writes)
    precision: str
    reasons: list[str] = field(default_factory=list)
    manifest: dict | None = None

    @property
    def usable(self) -> bool:
        return self.state == "usable"

    def message(self) -> str:
        return f"{self.precision} engines {self.state}: {'; '.join(self.reasons) or self.path}"


def find_engines(md: ModelDir, gpu: GpuIdentity, trt_version: str, precision: str) -> EngineStatus:
    """Are there engines for `precision` built here, from today's ONNX files, intact?"""
    here = engine_dir(md.path, gpu, trt_version)
    manifest = load(here)
    entries = (manifest or {}).get("engines", {}).get(precision)
    if not entries or manifest is None:
        state, reasons = _elsewhere(md, here, gpu, trt_version, precision)
        return EngineStatus(state, here, precision, reasons)
    reasons = []
    if manifest["tensorrt"] != trt_version:
        reasons.append(f"built with TensorRT {manifest['tensorrt']}, this is {trt_version}")
    if manifest["gpu"] != gpu.to_json():
        reasons.append(f"built for {_gpu_text(manifest['gpu'])}, this is {_gpu_text(gpu.to_json())}")
    for part in PARTS:
        entry = entries.get(part)
        if entry is None:
            reasons.append(f"no {part} plan recorded")
            continue
        onnx = md.path / entry["onnx"]
        try:
            expected = onnx_for(md, part, precision)
        except InputError:
            expected = onnx
        if expected.name != entry["onnx"]:
            reasons.append(f"{part} was built from {entry['onnx']}, the model now has {expected.name}")
        elif not onnx.is_file():
            reasons.append(f"{onnx.name} is gone")
        elif sha256_file(onnx) != entry["onnx_sha256"]:
            reasons.append(f"{onnx.name} changed since the build")
        plan = here / entry["plan"]
        if not plan.is_file():
            reasons.append(f"{plan.name} is missing")
        elif plan.stat().st_size != entry["plan_bytes"] or sha256_file(plan) != entry["plan_sha256"]:
            reasons.append(f"{plan.name} differs from the build (truncated or corrupt)")
    return EngineStatus("stale" if reasons else "usable", here, precision, reasons, manifest)


def _elsewhere(md: ModelDir, here: Path, gpu: GpuIdentity, trt_version: str, precision: str) -> tuple[str, list]:
    """Nothing here: say which other GPU/TensorRT the existing engines were built for."""
    root = md.path / ENGINES_DIR
    others = []
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        m = load(d) if d != here else None
        if m and precision in m.get("engines", {}):
            others.append(f"{d.name} (built for {_gpu_text(m['gpu'])}, TensorRT {m['tensorrt']})")
    if not others:
        return "missing", [f"no {precision} engines in {root} for {engine_dir_name(gpu, trt_version)}"]
    this = f"{_gpu_text(gpu.to_json())}, TensorRT {trt_version}"
    return "stale", [f"engines exist only for other machines: {', '.join(others)}; this is {this}"]


def _gpu_text(g: dict) -> str:
    return f"{g.get('name')} (compute {g.get('compute_capability')})"
