"""nn.Modules that exist only for tracing to ONNX.

They fix the graph to the tensor contract: the encoder takes the preprocessed image
and returns the embedding; the decoder takes the embedding and N boxes in the model's
input frame and returns mask token 0's logits and score. Mask token 0 is what
`multimask_output=False` returns, which is what MedSAM uses for box prompts (SAM's
`--return-single-mask` ONNX option picks by score and is wrong for boxes).
"""

from __future__ import annotations

import torch
from torch import nn


def decode_boxes(sam: nn.Module, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MedSAM's decoder call: boxes (N,4) in the model frame -> mask token 0 logits (N,1,256,256), iou (N,1).

    The one place the box-only prompt and `multimask_output=False` are spelled out; the
    export wrapper, the reference predictor and the PyTorch backend all call it.
    """
    pe = sam.prompt_encoder
    sparse, dense = pe(points=None, boxes=boxes[:, None, :], masks=None)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )


class EncoderForExport(nn.Module):
    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (1,3,S,S) float32 -> embedding (1,256,64,64)."""
        return self.image_encoder(image)


class DecoderForExport(nn.Module):
    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (1,256,64,64), boxes (N,4) -> logits (N,1,256,256), iou (N,1)."""
        return decode_boxes(self, embedding, boxes)
