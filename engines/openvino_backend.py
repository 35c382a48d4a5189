"""OpenVINO backend on the CPU: the model directory's ONNX files with real BF16 and INT8 kernels.

onnxruntime's CPU provider computes FP16 files in FP32 and runs Q/DQ INT8 as fake
quantization; OpenVINO's CPU plugin reads the same files and runs Q/DQ with integer
kernels, and the FP32 files at BF16 inference precision where the CPU has BF16
arithmetic (AVX-512 BF16 or AMX). What ran is read back from the compiled models
(inference precision, threads), never assumed from what was asked.

Start-up: compiled models are kept in `<model_dir>/engines/openvino_cache/`
(engines/openvino_cache.py), so only the first start compiles.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medsam_edge.contract import EMBEDDING, IMAGE, IOU, LOW_RES_LOGITS, POINT_COORDS, POINT_LABELS, PRECISIONS
from medsam_edge.engines.base import Backend
from medsam_edge.engines.openvino_cache import cache_key, compile_cached, file_sha256
from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

NAME = "openvino-cpu"
# Our precisions -> OpenVINO's inference precision for the ops the file leaves in float.
# fp32 is pinned to f32: on CPUs with AMX OpenVINO's default would be bf16, and "fp32"
# must mean FP32. The FP16 file's ops run in FP32 on CPUs without FP16 arithmetic (as on
# onnxruntime); the INT8 file's Q/DQ pairs run as integer kernels, the rest in FP32.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
PRECISIONS_HERE = tuple(p for p in PRECISIONS if "openvino" in PRECISIONS[p].runs_on)
assert set(PRECISIONS_HERE) == set(INFERENCE_PRECISION), "contract.PRECISIONS and this table disagree"


def usable() -> tuple[bool, str]:
    """(True, "") when openvino imports and has a CPU device; else False and why."""
    try:
        import openvino as ov
    except ImportError as e:
        return False, f"openvino does not import ({e}); pip install 'medsam-edge[openvino]'"
    try:
        devices = ov.Core().available_devices
    except Exception as e:  # a broken install raises from the plugin loader
        return False, f"openvino's Core does not start ({str(e).splitlines()[0][:160]})"
    if "CPU" not in devices:
        return False, f"openvino has no CPU device here (devices: {', '.join(devices) or 'none'})"
    return True, ""


def cpu_capabilities(core) -> tuple[str, set]:
    """(CPU name, OpenVINO's OPTIMIZATION_CAPABILITIES for it, e.g. {"FP32", "INT8", "BF16"})."""
    return str(core.get_property("CPU", "FULL_DEVICE_NAME")), set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def has_bf16(core) -> bool:
    """The CPU plugin lists BF16 only where the CPU computes it natively (AVX-512 BF16, AMX)."""
    return "BF16" in cpu_capabilities(core)[1]


def precision_support(precision: str, core=None) -> tuple[bool, str]:
    """(True, "") when openvino-cpu runs `precision` on this CPU, else False and a one-line
    reason (for callers that evaluate every CPU backend that can run a file, e.g. calibration)."""
    if precision not in INFERENCE_PRECISION:
        return False, (f"backend {NAME} runs precisions {', '.join(PRECISIONS_HERE)}, not {precision!r}; "
                       "int8dyn is onnxruntime's own (choose --backend onnxruntime-cpu or --precision int8)")
    if INFERENCE_PRECISION[precision] == "bf16":
        if core is None:
            import openvino as ov

            core = ov.Core()
        cpu, caps = cpu_capabilities(core)
        if "BF16" not in caps:
            return False, (f"--precision bf16: this CPU ({cpu}) has no BF16 arithmetic (OpenVINO lists "
                           f"{', '.join(sorted(caps))}; needs AVX-512 BF16 or AMX); choose --precision fp32 or int8")
    return True, ""


_STATES = {"cached": "imported from the compiled cache", "compiled": "compiled, cache written",
           "uncached": "compiled, no cache"}


def _type_name(t) -> str:
    """An OpenVINO element type as its short name ("f32", "bf16")."""
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


class OpenvinoBackend(Backend):
    name = NAME
    device = "cpu"

    def __init__(
        self,
        encoder_onnx: Path,
        decoder_onnx: Path,
        precision: str = "fp32",
        threads: int | None = None,
        decoder_threads: int | None = None,
        cache_dir: Path | None = None,
        plans: dict | None = None,
    ) -> None:
        """threads: CPU threads of the encoder (and of the decoder unless decoder_threads is
        given; None: OpenVINO's default, every core). cache_dir: where compiled models are
        kept (None: compile every time). plans: with precision bf16, per part the BF16 plan
        that keeps some blocks FP32 (engines/openvino_segments.py; a part without one runs
        whole at BF16)."""
        import openvino as ov

        from medsam_edge.engines import openvino_segments as segs

        core = ov.Core()
        ok, why = precision_support(precision, core)
        if not ok:
            raise InputError(why)
        cpu, caps = cpu_capabilities(core)
        hint = INFERENCE_PRECISION[precision]
        plans = {k: v for k, v in (plans or {}).items() if v} if precision == "bf16" else {}
        for part, plan in plans.items():
            segs.check_plan(plan, f"the {part}'s BF16 plan")
            onnx = Path(encoder_onnx if part == "encoder" else decoder_onnx)
            if plan.get("onnx_sha256") and onnx.is_file() and plan["onnx_sha256"] != file_sha256(onnx):
                raise InputError(f"{onnx}: the {part}'s BF16 plan was made for another {onnx.name}; run "
                                 f"`medsam-edge calibrate {onnx.parent} --precision bf16` again")
        self.precision = precision
        self.plans = plans
        self.paths = {"encoder": Path(encoder_onnx), "decoder": Path(decoder_onnx)}
        self.version = ov.get_version()
        self.cpu = cpu
        # Real-time mode runs encoder and decoder at once on their own thread counts; pinned
        # threads of two compiled models can land on the same core, so pinning is left to
        # OpenVINO only when one part runs at a time.
        concurrent = decoder_threads is not None
        self.parts = {}
        self.chains: dict[str, segs.Chain] = {}
        self.startup: dict[str, dict] = {}
        for part, onnx, n in (("encoder", Path(encoder_onnx), threads), ("decoder", Path(decoder_onnx),
                                                                        decoder_threads or threads)):
            if not onnx.is_file():
                raise InputError(f"{onnx}: ONNX file not found")
            plan = plans.get(part)
            cut = segs.segments(plan) if plan else [segs.Segment(None, None, "bf16" if hint == "bf16" else "fp32", ())]
            compiled, state, seconds = [], [], 0.0
            for i, seg in enumerate(cut):
                h = seg.hint if plan else hint
                config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": h}
                if n:
                    config["INFERENCE_NUM_THREADS"] = int(n)
                if concurrent:
                    config["ENABLE_CPU_PINNING"] = False
                bounds = [seg.start, seg.end] if plan else None
                key = cache_key(onnx, h, self.version, cpu, caps, bounds)
                name = f"{part}.s{i}" if plan else part
                c = compile_cached(core, onnx, name, precision, config, key, cache_dir,
                                   (lambda seg=seg: segs.submodel(core, onnx, seg)) if plan else None)
                self._check(part, c.model, h, n)
                compiled.append(c.model)
                state.append(c.state)
                seconds += c.seconds
            self.parts[part] = compiled[0]
            self.chains[part] = segs.Chain(compiled, cut)
            merged = state[0] if len(set(state)) == 1 else "+".join(state)
            self.startup[part] = {"state": merged, "seconds": round(seconds, 3)}
            log.info("openvino: %s ready in %.2f s (%s)%s", part, seconds, _STATES.get(merged, merged),
                     f", {len(cut)} segment(s) of its BF16 plan" if plan else "")
        self.threads = {p: self._read(p, "INFERENCE_NUM_THREADS") for p in self.parts}
        self.inference_precision = {p: self._precision_of(p, hint) for p in self.parts}

    def _precision_of(self, part: str, hint: str) -> str:
        """What ran, read back: "bf16", "f32", or for a planned part "bf16+f32 (K of N blocks f32)"."""
        plan = self.plans.get(part)
        if not plan:
            return _type_name(self._read(part, "INFERENCE_PRECISION_HINT"))
        from medsam_edge.engines.openvino_segments import fp32_share

        got = sorted({_type_name(c.get_property("INFERENCE_PRECISION_HINT")) for c in self.chains[part].compiled})
        k, n = fp32_share(plan)
        return "+".join(got) + (f" ({k} of {n} blocks f32)" if len(got) > 1 else "")

    def _read(self, part: str, prop: str):
        return self.parts[part].get_property(prop)

    def _check(self, part: str, model, hint: str, threads: int | None) -> None:
        """Refuse a compiled model whose precision is not the one asked (never a silently
        different result); say so when OpenVINO capped the thread count."""
        got = _type_name(model.get_property("INFERENCE_PRECISION_HINT"))
        if got != hint:
            raise InputError(f"--precision {self.precision}: OpenVINO compiled the {part} at {got}, not {hint}, "
                             f"on this CPU ({self.cpu}); choose --precision fp32")
        n = int(model.get_property("INFERENCE_NUM_THREADS"))
        if threads and n != threads:
            log.warning("openvino: %s runs %d threads, not the %d asked (the CPU has fewer)", part, n, threads)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """image (1,3,S,S) float32 -> embedding (1,256,64,64) float32, a new array (the caller keeps it)."""
        # share_inputs: the request reads the caller's array in place (infer is synchronous);
        # outputs are copied, since the next call writes into the request's own buffer.
        return self.chains["encoder"].infer({IMAGE: np.ascontiguousarray(image, np.float32)})[EMBEDDING]

    def decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.chains["decoder"].infer(
            {EMBEDDING: np.ascontiguousarray(embedding, np.float32),
             POINT_COORDS: np.ascontiguousarray(coords, np.float32),
             POINT_LABELS: np.ascontiguousarray(labels, np.float32)})
        return out[LOW_RES_LOGITS], out[IOU]

    def describe(self) -> dict:
        return {**super().describe(), "openvino": self.version.split("-")[0], "cpu": self.cpu,
                "inference_precision": dict(self.inference_precision),
                "threads": {k: int(v) for k, v in self.threads.items()},
                "compiled": {k: v["state"] for k, v in self.startup.items()},
                "startup_s": {k: v["seconds"] for k, v in self.startup.items()},
                **({"bf16_plan": self.plan_id} if self.plans else {})}

    @property
    def plan_id(self) -> str | None:
        from medsam_edge.engines.openvino_segments import plan_id

        return plan_id(self.plans)

    def close(self) -> None:
        for chain in self.chains.values():
            chain.close()
        self.chains = {}
        self.parts = {}
