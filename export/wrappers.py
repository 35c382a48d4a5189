"""The decoder call in two spellings, and the nn.Modules that exist only for tracing to ONNX.

`decode_official` is the reference: segment-anything's PromptEncoder given points and a
box as its own arguments, then the MaskDecoder with `multimask_output=False` (mask token
0, what MedSAM uses for box prompts; SAM's `--return-single-mask` ONNX option picks by
score and is wrong for boxes). `decode_tokens` is the same arithmetic written the way
SAM's ONNX export writes it, over the contract's point tokens (labels -1..3), so one
traced graph serves boxes, clicks and both; the export's parity check holds the two
together. Both take prompts in the model's input pixel frame.
"""

from __future__ import annotations

import torch
from torch import nn

from medsam_edge.contract import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PADDING


def _decode(sam: nn.Module, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, h, w)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )


def decode_boxes(sam: nn.Module, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MedSAM's decoder call: boxes (N,4) -> mask token 0 logits (N,1,256,256), iou (N,1)."""
    sparse, _ = sam.prompt_encoder(points=None, boxes=boxes.reshape(-1, 1, 4), masks=None)
    return _decode(sam, embedding, sparse)


def decode_official(sam: nn.Module, embedding: torch.Tensor, coords: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract's tokens (N,P,2)/(N,P) handed to the official PromptEncoder as what they are.

    Every prompt of one call must have the same layout (the runtime groups them so): a box
    is the last two tokens labelled 2 and 3; a prompt without one ends in a padding token,
    which the PromptEncoder appends itself.
    """
    labels = labels.to(coords.dtype)
    has_box = bool((labels[:, -1] == BOX_BOTTOM_RIGHT).all())
    if has_box:
        if not bool((labels[:, -2] == BOX_TOP_LEFT).all()):
            raise ValueError("a box is two tokens labelled 2 then 3 at the end of every prompt")
        boxes, coords, labels = coords[:, -2:].reshape(-1, 4), coords[:, :-2], labels[:, :-2]
    else:
        if not bool((labels[:, -1] == PADDING).all()):
            raise ValueError("prompts of one call must all have a box, or all end in a padding token")
        boxes, coords, labels = None, coords[:, :-1], labels[:, :-1]
    if bool((labels == PADDING).any()) or bool(((labels == BOX_TOP_LEFT) | (labels == BOX_BOTTOM_RIGHT)).any()):
        raise ValueError("padding and box corners only at the end of a prompt; group prompts by layout")
    points = (coords, labels) if coords.shape[1] else None
    if points is None and boxes is None:
        raise ValueError("a prompt needs at least a box or one point")
    sparse, _ = sam.prompt_encoder(points=points, boxes=None if boxes is None else boxes.reshape(-1, 1, 4), masks=None)
    return _decode(sam, embedding, sparse)


def embed_tokens(pe: nn.Module, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The PromptEncoder's point and corner embeddings for (N,P,2)/(N,P) tokens, branch-free.

    Same arithmetic as `_embed_points` and `_embed_boxes`: shift to the pixel centre,
    normalise by the input size, random-Fourier encoding, then the learned embedding of
    the token's label (a padding token is the not-a-point embedding alone). Where-selects
    instead of multiplied masks: bit-for-bit the official result, and no bool-to-float
    Cast in the graph (the FP16 converter mistypes those).
    """
    size = torch.tensor([pe.input_image_size[1], pe.input_image_size[0]], dtype=coords.dtype)
    enc = pe.pe_layer._pe_encoding((coords + 0.5) / size)
    lab = labels.unsqueeze(-1)
    enc = torch.where(lab == PADDING, pe.not_a_point_embed.weight, enc)
    for i in range(pe.num_point_embeddings):
        enc = torch.where(lab == i, enc + pe.point_embeddings[i].weight, enc)
    return enc


def decode_tokens(sam: nn.Module, embedding: torch.Tensor, coords: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The traced decoder: any mix of clicks, boxes and padding in one tensor pair."""
    return _decode(sam, embedding, embed_tokens(sam.prompt_encoder, coords, labels))


class EncoderForExport(nn.Module):
    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (1,3,S,S) float32 -> embedding (1,256,64,64)."""
        return self.image_encoder(image)


class DecoderForExport(nn.Module):
    def __init__(self, sam: nn.Module, fast: bool = True) -> None:
        """fast: trace export.decoder_fast's spelling of the mask decoder (same arithmetic,
        fewer passes) where the decoder is SAM's; False: the official MaskDecoder."""
        super().__init__()
        from medsam_edge.export.decoder_fast import FastMaskDecoder, supported

        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.fast = FastMaskDecoder(sam.mask_decoder) if fast and supported(sam.mask_decoder) else None

    def forward(self, embedding: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (1,256,64,64), coords (N,P,2), labels (N,P) -> logits (N,1,256,256), iou (N,1)."""
        if self.fast is None:
            return decode_tokens(self, embedding, point_coords, point_labels)
        pe = self.prompt_encoder
        return self.fast(embedding, pe.get_dense_pe(), embed_tokens(pe, point_coords, point_labels),
                         pe.no_mask_embed.weight.reshape(-1))
