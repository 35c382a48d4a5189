"""onnxruntime backend: CPU everywhere; CUDA and TensorRT execution providers where installed.

On the CUDA and TensorRT providers the embedding stays on the device: the encoder's
output is bound to device memory (IO binding) and handed out as an OrtValue, which the
decoder reads in place (4 MB each way per frame at FP32 otherwise). The CPU path returns
numpy arrays, as before.
"""

from __future__ import annotations

import ctypes.util
import logging
import re
from importlib import metadata
from pathlib import Path

import numpy as np

from medsam_edge.contract import EMBEDDING, IMAGE, IOU, LOW_RES_LOGITS, POINT_COORDS, POINT_LABELS
from medsam_edge.engines.base import Backend
from medsam_edge.errors import InputError

log = logging.getLogger(__name__)

# Our backend names -> onnxruntime provider lists, in the order onnxruntime should try them.
PROVIDERS = {
    "onnxruntime-cpu": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# Encoders whose input side is at least this keep GBs in onnxruntime's arena after a call,
# more than a 24 GB machine holds for three at once (docs/decisions.md#large-encoder-memory).
LARGE_INPUT_SIDE = 1024


# onnxruntime-gpu builds before this are linked against TensorRT 10 (libnvinfer.so.10):
# with only TensorRT 11 installed their TensorRT provider fails to load and onnxruntime
# falls back to CUDA without a word (the 10.x -> 11.x migration guide; issue 11).
ORT_FOR_TENSORRT_11 = (1, 27)
_TENSORRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs",
                   "tensorrt-libs")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def installed_tensorrt_major() -> int | None:
    """TensorRT's major version from its wheels, or from the libnvinfer the loader finds."""
    for dist in _TENSORRT_DISTS:
        try:
            return _version_tuple(metadata.version(dist))[0]
        except (metadata.PackageNotFoundError, IndexError):
            continue
    lib = ctypes.util.find_library("nvinfer")  # e.g. "libnvinfer.so.10"
    m = re.search(r"\.so\.(\d+)", lib or "")
    return int(m.group(1)) if m else None


def provider_problem(provider: str, ort_version: str | None = None, tensorrt_major: int | None = -1,
                     driver: bool | None = None) -> str | None:
    """Why a provider onnxruntime lists would not really run here, or None.

    The facts default to this machine's (onnxruntime's version, the installed TensorRT
    major, whether an NVIDIA driver library is found); tests pass them in.
    """
    if provider == "CPUExecutionProvider":
        return None
    if ort_version is None:
        import onnxruntime as ort

        ort_version = ort.__version__
    if driver is None:
        driver = ctypes.util.find_library("cuda") is not None
    if not driver:
        return f"onnxruntime lists {provider} but no NVIDIA driver (libcuda) is found: it would run on the CPU"
    if provider != "TensorrtExecutionProvider":
        return None
    if tensorrt_major == -1:
        tensorrt_major = installed_tensorrt_major()
    if tensorrt_major is None:
        return ("onnxruntime lists TensorrtExecutionProvider but no TensorRT library (libnvinfer) is installed: "
                "it would fall back to CUDA; pip install 'medsam-edge[gpu-cu12]' or [gpu-cu13]")
    if tensorrt_major >= 11 and _version_tuple(ort_version) < ORT_FOR_TENSORRT_11:
        need = ".".join(map(str, ORT_FOR_TENSORRT_11))
        return (f"onnxruntime-gpu {ort_version} is built for TensorRT 10 but TensorRT {tensorrt_major} is installed: "
                f"TensorRT 11 needs onnxruntime-gpu {need} or newer (older builds fall back to CUDA silently)")
    return None


def trt_profile_options(profile: dict) -> dict[str, str]:
    """onnxruntime TensorRT provider options for explicit min/opt/max shapes, from an
    engine_manifest.profiles() part: {"trt_profile_min_shapes": "point_coords:1x1x2,...", ...}.

    Without them the provider builds for the first shape it sees and rebuilds its engine
    mid-stream the first time a larger prompt count or click count arrives."""
    out = {}
    for key in ("min", "opt", "max"):
        out[f"trt_profile_{key}_shapes"] = ",".join(
            f"{name}:{'x'.join(str(d) for d in s[key])}" for name, s in profile.items())
    return out


def session_options(ort, threads: int | None = None):
    """Quiet session options; `threads` intra-op threads (None: onnxruntime's default)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def decoder_options(ort, threads: int | None = None):
    """session_options without onnxruntime's memory pattern: the pattern is planned and kept
    per input shape, so every new prompt count added a block of its own on top of the arena
    (decoding 16, 16 and 8 prompts held 1.05 GB of RSS, 0.58 GB without; ~30 MB a prompt)."""
    opts = session_options(ort, threads)
    opts.enable_mem_pattern = False
    return opts


def check_contract(session, part: str, path: Path, input_size: int | None) -> None:
    """InputError unless the loaded file has the contract's inputs and outputs for `part`
    (an encoder and decoder swapped, an encoder exported at another size than the
    manifest says): named from onnxruntime's session, so no onnx package is needed."""
    from medsam_edge.engines.engine_manifest import check_io

    inputs = {i.name: tuple(i.shape) for i in session.get_inputs()}
    size = input_size or next((d for d in inputs.get(IMAGE, ())[-1:] if isinstance(d, int)), 0)
    check_io(path, part, size, inputs, [o.name for o in session.get_outputs()])


def release_options(ort):
    """RunOptions that shrink the CPU arena after the call: the working memory goes back
    to the system instead of staying reserved by an idle session (ViT-B FP32: 3.7 GB
    resident after a call without it, 0.6 GB with it, same time within noise)."""
    ro = ort.RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ro


class OnnxruntimeBackend(Backend):
    def __init__(
        self,
        encoder_onnx: Path | None,
        decoder_onnx: Path | None,
        precision: str = "fp32",
        threads: int | None = None,
        decoder_threads: int | None = None,
        cache_dir: Path | None = None,
        *,
        name: str = "onnxruntime-cpu",
        release_memory: bool | None = False,
        trt_profiles: dict | None = None,
        io_device: str | None = None,
        input_size: int | None = None,
    ) -> None:
        """Files, precision, threads and cache first, as every file backend takes them
        (engines.loaders.open_files opens them by backend name).

        threads: onnxruntime intra-op threads of the encoder session (and of the decoder
        unless decoder_threads is given; None: onnxruntime's default, every core).
        cache_dir: the TensorRT provider's engine and timing caches (None: none kept).
        name: which provider list (PROVIDERS).
        release_memory: hand the encoder's working memory back after every call (see
        release_options); for processes that keep several big encoders open. None: for
        encoders whose input side is at least LARGE_INPUT_SIDE.
        encoder_onnx or decoder_onnx None: a backend of one part (calibration pairs a
        candidate encoder with the FP32 decoder, or the reference's embeddings with a
        candidate decoder).
        trt_profiles: engine_manifest.profiles() of the model, for the TensorRT provider.
        io_device: where encode() leaves the embedding ("cuda", "cpu"); None: on the
        provider's device (IO binding) for CUDA/TensorRT, a numpy array on the CPU.
        input_size: the side the manifest says the encoder takes; each file's own inputs
        and outputs are checked against the contract (check_contract)."""
        import onnxruntime as ort

        if name not in PROVIDERS or precision in PROVIDERS:
            raise ValueError(f"OnnxruntimeBackend(encoder, decoder, precision, ..., name=...): name {name!r}, "
                             f"precision {precision!r}; name is one of {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[name]
        missing = [p for p in wanted[:1] if p not in ort.get_available_providers()]
        if missing:
            raise InputError(
                f"backend {name}: onnxruntime has no {missing[0]} here (installed: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or choose onnxruntime-cpu"
            )
        self.name = name
        self.device = "cpu" if name == "onnxruntime-cpu" else "cuda"
        self.precision = precision
        self.threads = {"encoder": threads, "decoder": decoder_threads or threads}
        if encoder_onnx is None and decoder_onnx is None:
            raise ValueError("an onnxruntime backend needs an encoder, a decoder or both")
        # What it was opened on; a reduced precision's decoder may be the FP32 one standing in.
        self.paths = {part: Path(f) for part, f in (("encoder", encoder_onnx), ("decoder", decoder_onnx)) if f}
        self.files = {part: f.name for part, f in self.paths.items()}
        profiles = trt_profiles or {}
        self.encoder = (self._session(ort, encoder_onnx, session_options(ort, threads),
                                      [self._provider_options(p, cache_dir, profiles.get("encoder")) for p in wanted])
                        if encoder_onnx is not None else None)
        self.decoder = (self._session(ort, decoder_onnx, decoder_options(ort, decoder_threads or threads),
                                      [self._provider_options(p, cache_dir, profiles.get("decoder")) for p in wanted])
                        if decoder_onnx is not None else None)
        for part, session, path in (("encoder", self.encoder, encoder_onnx), ("decoder", self.decoder, decoder_onnx)):
            if session is not None:
                check_contract(session, part, Path(path), input_size)
        if release_memory is None:
            side = next((i.shape[-1] for i in self.encoder.get_inputs() if i.name == IMAGE), 0) if self.encoder else 0
            release_memory = isinstance(side, int) and side >= LARGE_INPUT_SIDE
        self.releases_memory = release_memory
        self._encode_options = release_options(ort) if release_memory else None
        # What actually ran: onnxruntime silently drops a provider it cannot initialise.
        self.providers = (self.encoder or self.decoder).get_providers()
        if self.providers[0] != wanted[0]:
            log.warning("%s: onnxruntime fell back to %s", name, self.providers[0])
            self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else self.device
        # Where encode() leaves the embedding: the provider's device (IO binding), or None
        # for plain numpy runs. io_device="cpu" runs the binding path on the CPU (tests).
        self.io_device = io_device if io_device is not None else (None if self.device == "cpu" else "cuda")

    @staticmethod
    def _provider_options(provider: str, cache_dir: Path | None, profile: dict | None = None):
        """TensorRT: engine and timing caches under the model directory, and explicit
        profile shapes for the dynamic inputs (the decoder's prompt and point axes)."""
        if provider != "TensorrtExecutionProvider":
            return provider
        opts: dict = {}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                         "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)})
        dynamic = {k: v for k, v in (profile or {}).items() if v["min"] != v["max"]}
        if dynamic:
            opts.update(trt_profile_options(profile or {}))
        return (provider, opts) if opts else provider

    @staticmethod
    def _session(ort, path: Path, opts, providers):
        if not Path(path).is_file():
            raise InputError(f"{path}: ONNX file not found")
        try:
            return ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types per failure
            raise InputError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None

    def encode(self, image: np.ndarray):
        """-> (1, 256, 64, 64) float32: a numpy array, or an OrtValue on io_device."""
        if self.encoder is None:
            raise ValueError("this onnxruntime backend was opened without an encoder")
        x = np.ascontiguousarray(image, np.float32)
        if self.io_device is None:
            return self.encoder.run([EMBEDDING], {IMAGE: x}, self._encode_options)[0]
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(IMAGE, x)
        binding.bind_output(EMBEDDING, self.io_device, 0)
        self.encoder.run_with_iobinding(binding, self._encode_options)
        return binding.get_outputs()[0]  # the OrtValue owns its device memory

    def decode(self, embedding, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.decoder is None:
            raise ValueError("this onnxruntime backend was opened without a decoder")
        coords = np.ascontiguousarray(coords, np.float32)
        labels = np.ascontiguousarray(labels, np.float32)
        if self.io_device is None:
            logits, iou = self.decoder.run([LOW_RES_LOGITS, IOU],
                                           {EMBEDDING: _host(embedding), POINT_COORDS: coords,
                                            POINT_LABELS: labels})
            return logits, iou
        binding = self.decoder.io_binding()
        if isinstance(embedding, np.ndarray):
            binding.bind_cpu_input(EMBEDDING, np.ascontiguousarray(embedding, np.float32))
        else:
            binding.bind_ortvalue_input(EMBEDDING, embedding)
        binding.bind_cpu_input(POINT_COORDS, coords)
        binding.bind_cpu_input(POINT_LABELS, labels)
        for name in (LOW_RES_LOGITS, IOU):
            binding.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(binding)
        logits, iou = binding.copy_outputs_to_cpu()
        return logits, iou

    def embedding_to_numpy(self, embedding) -> np.ndarray:
        return _host(embedding)

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers,
                "threads": {k: v or "default" for k, v in self.threads.items()}, "files": self.files,
                "embedding_on": self.io_device or "host"}


def _host(embedding) -> np.ndarray:
    # Not a method: a subclass whose handles are not arrays resolves them before calling decode.
    return embedding if isinstance(embedding, np.ndarray) else embedding.numpy()
