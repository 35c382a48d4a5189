"""What reduced precision is measured against: the FP32 PyTorch reference (the torch
backend: segment-anything's modules, FP32 eager) where it can be rebuilt here, else the
FP32 ONNX pair whose parity with it export measured (the onnxruntime backend).

Both are engines backends and take the same preprocessed tensor and model-frame
prompts, so a difference is the arithmetic alone.
"""

from __future__ import annotations

from pathlib import Path

from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir


def fp32_pair(md: ModelDir, threads: int | None = None):
    """The exported FP32 encoder.onnx + decoder.onnx on onnxruntime's CPU provider."""
    from medsam_edge.engines.onnxruntime_backend import LARGE_INPUT_SIDE, OnnxruntimeBackend

    return OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder"), threads=threads,
                              release_memory=md.preprocess.size >= LARGE_INPUT_SIDE)


def open_reference(md: ModelDir, checkpoint: str | Path | None = None) -> tuple[object, str]:
    """(reference backend, description). The PyTorch one needs torch and the exported weights."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return fp32_pair(md), _onnx_text(md, "torch is not installed")
    from medsam_edge.engines.torch_backend import TorchBackend

    source = md.manifest.get("checkpoint") or {}
    if checkpoint is not None:
        from medsam_edge.manifest import sha256_file

        if source.get("sha256") and sha256_file(checkpoint) != source["sha256"]:
            raise InputError(f"--checkpoint {checkpoint}: not the checkpoint {md.path} was exported from (SHA-256 differs)")
    try:
        backend = TorchBackend(md, checkpoint)
    except InputError as e:
        return fp32_pair(md), _onnx_text(md, str(e))
    return backend, f"PyTorch FP32 reference ({source.get('kind', 'checkpoint')})"


def _onnx_text(md: ModelDir, why: str) -> str:
    parity = md.manifest.get("parity") or {}
    err = parity.get("embedding_rel_err")
    at = f", embedding rel err {err:.1e} vs PyTorch at export" if isinstance(err, (int, float)) else ""
    return f"FP32 ONNX ({why}{at})"
