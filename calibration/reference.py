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


def open_reference(md: ModelDir, checkpoint: str | Path | None = None) -> tuple[object, str]:
    """(reference backend, description). The PyTorch one needs torch and the exported weights;
    else the exported FP32 encoder.onnx + decoder.onnx on onnxruntime's CPU provider."""
    from medsam_edge.engines.loaders import open_files

    try:
        import torch  # noqa: F401
    except ImportError:
        return open_files(md.onnx("encoder"), md.onnx("decoder")), _onnx_text(md, "torch is not installed")
    from medsam_edge.export.torch_backend import TorchBackend

    source = md.manifest.get("checkpoint") or {}
    if checkpoint is not None:
        from medsam_edge.manifest import sha256_file

        if source.get("sha256") and sha256_file(checkpoint) != source["sha256"]:
            raise InputError(f"--checkpoint {checkpoint}: not the checkpoint {md.path} was exported from (SHA-256 differs)")
    try:
        backend = TorchBackend(md, checkpoint)
    except InputError as e:
        return open_files(md.onnx("encoder"), md.onnx("decoder")), _onnx_text(md, str(e))
    return backend, f"PyTorch FP32 reference ({source.get('kind', 'checkpoint')})"


def _onnx_text(md: ModelDir, why: str) -> str:
    parity = md.manifest.get("parity") or {}
    err = parity.get("embedding_rel_err")
    at = f", embedding rel err {err:.1e} vs PyTorch at export" if isinstance(err, (int, float)) else ""
    return f"FP32 ONNX ({why}{at})"
