"""onnxruntime backend: CPU everywhere; CUDA and TensorRT execution providers where installed."""

from __future__ import annotations

import logging
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


# Encoders whose input side is at least this keep GBs in onnxruntime's arena after a call
# (ViT-B at 1024: measured 7 GB FP32, 15 GB with Q/DQ INT8, 6.6 GB dynamic INT8), more
# than a 24 GB machine holds for three of them at once.
LARGE_INPUT_SIDE = 1024


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
        name: str = "onnxruntime-cpu",
        precision: str = "fp32",
        threads: int | None = None,
        cache_dir: Path | None = None,
        decoder_threads: int | None = None,
        release_memory: bool = False,
        input_size: int | None = None,
    ) -> None:
        """threads: onnxruntime intra-op threads of the encoder session (and of the decoder
        unless decoder_threads is given; None: onnxruntime's default, every core).
        release_memory: hand the encoder's working memory back after every call (see
        release_options); for processes that keep several big encoders open.
        encoder_onnx or decoder_onnx None: a backend of one part (calibration pairs a
        candidate encoder with the FP32 decoder, or the reference's embeddings with a
        candidate decoder). input_size: the side the manifest says the encoder takes; each
        file's own inputs and outputs are checked against the contract (check_contract)."""
        import onnxruntime as ort

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
        self.releases_memory = release_memory
        self._encode_options = release_options(ort) if release_memory else None
        providers = [self._provider_options(p, cache_dir) for p in wanted]
        if encoder_onnx is None and decoder_onnx is None:
            raise ValueError("an onnxruntime backend needs an encoder, a decoder or both")
        # Which files ran: a reduced precision's decoder may be the FP32 one standing in.
        self.files = {part: Path(f).name for part, f in (("encoder", encoder_onnx), ("decoder", decoder_onnx)) if f}
        self.encoder = (self._session(ort, encoder_onnx, session_options(ort, threads), providers)
                        if encoder_onnx is not None else None)
        self.decoder = (self._session(ort, decoder_onnx, decoder_options(ort, decoder_threads or threads), providers)
                        if decoder_onnx is not None else None)
        for part, session, path in (("encoder", self.encoder, encoder_onnx), ("decoder", self.decoder, decoder_onnx)):
            if session is not None:
                check_contract(session, part, Path(path), input_size)
        # What actually ran: onnxruntime silently drops a provider it cannot initialise.
        self.providers = (self.encoder or self.decoder).get_providers()
        if self.providers[0] != wanted[0]:
            log.warning("%s: onnxruntime fell back to %s", name, self.providers[0])
            self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else self.device

    @staticmethod
    def _provider_options(provider: str, cache_dir: Path | None):
        if provider == "TensorrtExecutionProvider" and cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            return (provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                               "trt_timing_cache_enable": True})
        return provider

    @staticmethod
    def _session(ort, path: Path, opts, providers):
        if not Path(path).is_file():
            raise InputError(f"{path}: ONNX file not found")
        try:
            return ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types per failure
            raise InputError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None

    def encode(self, image: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            raise ValueError("this onnxruntime backend was opened without an encoder")
        return self.encoder.run([EMBEDDING], {IMAGE: np.ascontiguousarray(image, np.float32)},
                                self._encode_options)[0]

    def decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.decoder is None:
            raise ValueError("this onnxruntime backend was opened without a decoder")
        logits, iou = self.decoder.run(
            [LOW_RES_LOGITS, IOU],
            {EMBEDDING: np.asarray(embedding, np.float32), POINT_COORDS: np.ascontiguousarray(coords, np.float32),
             POINT_LABELS: np.ascontiguousarray(labels, np.float32)},
        )
        return logits, iou

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers,
                "threads": {k: v or "default" for k, v in self.threads.items()}, "files": self.files}
