"""The PyTorch reference as a backend, and its "fast path" as the honest best-PyTorch figure.

Reference (the default, and always on the CPU): FP32 eager, the official modules as
written. Fast path (CUDA only): FP16 autocast scoped to each call (never entered
globally), scaled-dot-product attention swapped into SAM's attention modules, and
optionally torch.compile in "reduce-overhead" mode, which replays CUDA graphs.
torch is imported lazily: the runtime never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import types
from pathlib import Path

import numpy as np

from medsam_edge.engines.base import Backend
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir, load_model_dir

log = logging.getLogger(__name__)


def load_sam(md: ModelDir, checkpoint: str | Path | None = None):
    """The model directory's model in eval mode: from `checkpoint`, or rebuilt from the seed."""
    from medsam_edge.export.checkpoint import bundled_lite_checkpoint, load_weights
    from medsam_edge.manifest import sha256_file
    from medsam_edge.export.models import build_model

    source = md.manifest.get("checkpoint") or {}
    if checkpoint is None and source.get("kind") == "random-init":
        # export wrote build_model(id, seed) weights, so the same call rebuilds them exactly.
        return build_model(md.model_id, seed=int(source["seed"])).eval()
    if checkpoint is None and md.model_id == "lite_medsam" and source.get("kind") != "user file":
        checkpoint = bundled_lite_checkpoint()
    if checkpoint is None:
        raise InputError(f"{md.path} was exported from {source.get('file', 'a checkpoint')}; pass that checkpoint")
    # The reference must be the weights the ONNX files were exported from, or every
    # fidelity figure measured against it is meaningless.
    if source.get("sha256") and sha256_file(checkpoint) != source["sha256"]:
        raise InputError(f"{checkpoint}: not the checkpoint {md.path} was exported from (SHA-256 differs)")
    sam = build_model(md.model_id)
    load_weights(sam, checkpoint, md.model_id)
    return sam.eval()


def _vit_attention_sdpa(self, x):
    """segment-anything's ViT Attention.forward with SDPA; rel-pos becomes an additive mask."""
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, HW, C)
    bias = None
    if self.use_rel_pos:
        # As add_decomposed_rel_pos, but kept as a bias instead of added to a materialised map.
        r_q = q.reshape(b * self.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, self.num_heads, h * w, h * w)
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


def _decoder_attention_sdpa(self, q, k, v):
    """segment-anything's two-way transformer Attention.forward with SDPA."""
    import torch.nn.functional as F

    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def use_sdpa(sam) -> int:
    """Swap SDPA into SAM's attention modules (per instance); returns how many were swapped.

    LiteMedSAM's TinyViT attention carries learned biases of its own and stays as written.
    """
    from medsam_edge.export.sam_modules import sam_modeling

    m = sam_modeling()
    n = 0
    for mod in sam.modules():
        if isinstance(mod, m.image_encoder.Attention):
            mod.forward = types.MethodType(_vit_attention_sdpa, mod)
        elif isinstance(mod, m.transformer.Attention):
            mod.forward = types.MethodType(_decoder_attention_sdpa, mod)
        else:
            continue
        n += 1
    return n


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        model_dir,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        fast: bool = False,
        compile: bool = False,
    ) -> None:
        import torch

        md = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device}: torch sees no CUDA device here (torch {torch.__version__})")
        self._torch, self.device = torch, "cuda" if device.startswith("cuda") else "cpu"
        self._dev = torch.device(device)
        self.sam = load_sam(md, checkpoint).to(self._dev)
        # The fast path is a CUDA thing; on the CPU this stays the FP32 eager reference.
        self.fast = fast and self.device == "cuda"
        self.precision = "fp16" if self.fast else "fp32"
        self.sdpa_modules = use_sdpa(self.sam) if self.fast else 0
        self.compiled = compile and self.device == "cuda"
        self._encoder = self.sam.image_encoder
        if self.compiled:
            # "reduce-overhead" replays CUDA graphs; the decoder recompiles once per prompt shape.
            self._encoder = torch.compile(self._encoder, mode="reduce-overhead")
            self._decode_fn = torch.compile(self._decode_impl, mode="reduce-overhead")
        else:
            self._decode_fn = self._decode_impl

    def _autocast(self):
        if not self.fast:
            return contextlib.nullcontext()
        return self._torch.autocast("cuda", dtype=self._torch.float16)

    def encode(self, image: np.ndarray):
        x = self._torch.as_tensor(np.ascontiguousarray(image, np.float32)).to(self._dev)
        with self._torch.inference_mode(), self._autocast():
            out = self._encoder(x)
        return out.clone() if self.compiled else out  # compiled CUDA graphs reuse their output memory

    def _decode_impl(self, embedding, coords, labels):
        # The official PromptEncoder given boxes and clicks as its own arguments: the reference.
        from medsam_edge.export.wrappers import decode_official

        return decode_official(self.sam, embedding, coords, labels)

    def decode(self, embedding, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        emb = torch.as_tensor(embedding).to(self._dev)
        c = torch.as_tensor(np.ascontiguousarray(coords, np.float32)).to(self._dev)
        lab = torch.as_tensor(np.ascontiguousarray(labels, np.float32)).to(self._dev)
        with torch.inference_mode(), self._autocast():
            logits, iou = self._decode_fn(emb, c, lab)
        return logits.float().cpu().numpy(), iou.float().cpu().numpy()

    def sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def embedding_to_numpy(self, embedding) -> np.ndarray:
        return self._torch.as_tensor(embedding).float().cpu().numpy()

    def describe(self) -> dict:
        return {**super().describe(), "sdpa_modules": self.sdpa_modules, "compiled": self.compiled}
