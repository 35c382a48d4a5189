"""Builders for each model id: sizes live here and nowhere else.

Every model is segment-anything's `Sam` composer with its parts built: an image
encoder (SAM's ViT or our TinyViT), SAM's prompt encoder and SAM's mask decoder. The
state-dict keys are therefore `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`
for all of them, exactly as in the published checkpoints.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from medsam_edge.contract import EMBED_DIM, EMBED_HW, model_spec
from medsam_edge.export.sam_modules import sam_modeling


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn: list[int]) -> nn.Module:
    m = sam_modeling()
    return m.ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=1024,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=num_heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=14,
        out_chans=EMBED_DIM,
    )


def _tinyvit() -> nn.Module:
    from medsam_edge.export.tinyvit import build_lite_medsam_encoder

    return build_lite_medsam_encoder()


def _compose(image_encoder: nn.Module, input_size: int) -> nn.Module:
    m = sam_modeling()
    sam = m.Sam(
        image_encoder=image_encoder,
        prompt_encoder=m.PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(EMBED_HW, EMBED_HW),
            input_image_size=(input_size, input_size),
            mask_in_chans=16,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    return sam.eval()


_ENCODERS: dict[str, Callable[[], nn.Module]] = {
    "medsam_vit_b": partial(_vit, 768, 12, 12, [2, 5, 8, 11]),
    "sam_vit_b": partial(_vit, 768, 12, 12, [2, 5, 8, 11]),
    "lite_medsam": _tinyvit,
    "medsam_vit_tiny": partial(_vit, 32, 2, 2, [1]),
    "sam_vit_tiny": partial(_vit, 32, 2, 2, [1]),
}


def build_model(model_id: str, seed: int | None = None) -> nn.Module:
    """An eval-mode `Sam` for `model_id`, randomly initialised (seeded if asked)."""
    spec = model_spec(model_id)
    if seed is not None:
        torch.manual_seed(seed)
    return _compose(_ENCODERS[model_id](), spec.preprocess.size)
