"""What reduced precision is measured against: the FP32 PyTorch reference where it can be
rebuilt here, else the FP32 ONNX pair whose parity with it export measured.

Both take the same preprocessed tensor and model-frame boxes, so a difference is the
arithmetic alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir

from .evaluate import OrtPart


class OnnxPair:
    """The exported FP32 encoder.onnx + decoder.onnx on onnxruntime's CPU provider."""

    def __init__(self, md: ModelDir, threads: int | None = None) -> None:
        self.encoder = OrtPart(md.onnx("encoder"), threads)
        self.decoder = OrtPart(md.onnx("decoder"), threads)

    def encode(self, tensor: np.ndarray) -> np.ndarray:
        return self.encoder.encode(tensor)

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self.decoder.decode(embedding, boxes)


class TorchReference:
    """export.reference's predictor, FP32 eager on the CPU (mask token 0, boxes only)."""

    def __init__(self, sam, pre) -> None:
        from medsam_edge.export.reference import ReferencePredictor

        self.predictor = ReferencePredictor(sam, pre)

    def encode(self, tensor: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.predictor.sam.image_encoder(torch.from_numpy(tensor)).numpy()

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        import torch

        logits, _ = self.predictor.decode(torch.from_numpy(np.asarray(embedding, np.float32)), boxes)
        return logits.numpy()


def open_reference(md: ModelDir, checkpoint: str | Path | None = None) -> tuple[object, str]:
    """(reference, description). The PyTorch one needs torch and the exported weights."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return OnnxPair(md), _onnx_text(md, "torch is not installed")
    from medsam_edge.engines.torch_backend import load_sam

    source = md.manifest.get("checkpoint") or {}
    if checkpoint is not None:
        from medsam_edge.export.checkpoint import sha256_file

        if source.get("sha256") and sha256_file(checkpoint) != source["sha256"]:
            raise InputError(f"--checkpoint {checkpoint}: not the checkpoint {md.path} was exported from (SHA-256 differs)")
    try:
        sam = load_sam(md, checkpoint)
    except InputError as e:
        return OnnxPair(md), _onnx_text(md, str(e))
    return TorchReference(sam, md.preprocess), f"PyTorch FP32 reference ({source.get('kind', 'checkpoint')})"


def _onnx_text(md: ModelDir, why: str) -> str:
    parity = md.manifest.get("parity") or {}
    err = parity.get("embedding_rel_err")
    at = f", embedding rel err {err:.1e} vs PyTorch at export" if isinstance(err, (int, float)) else ""
    return f"FP32 ONNX ({why}{at})"
