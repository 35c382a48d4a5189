"""SAM's mask decoder spelled for speed: same arithmetic as the official module, fewer passes.

Traced into decoder.onnx instead of `MaskDecoder.forward`; the export's parity check
(export/parity.py) holds it to segment-anything's own modules. What differs, and why:

- The image embedding is not repeated per prompt. Without a mask prompt the dense
  embedding is the same `no_mask_embed` for every prompt, so the image side enters the
  transformer once (batch 1) and broadcasts against the N prompts' tokens: the first
  layer's image-only projections (keys, values, and the image-to-token queries) run once
  per call instead of once per prompt.
- The upscaling stays in token-major (NHWC) order. A kernel-2/stride-2 ConvTranspose
  does not overlap its outputs, so it is one matrix product per pixel to 4*Cout channels
  ordered (i, j, co); LayerNorm2d is then a LayerNormalization over the last axis, which
  both runtimes fuse. The official path transposes to NCHW, scatters two ConvTransposes
  and reduces over the channel axis in NCHW.
- Only mask token 0 is computed (MedSAM's `multimask_output=False`); the masks are the
  hypernetwork product taken before the pixels are put in image order, so the final
  shuffle moves one value per pixel instead of 32 channels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _k2s2_as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """ConvTranspose2d(k=2, s=2) -> (weight (4*Cout, Cin), bias (4*Cout,)) for F.linear, rows (i, j, co)."""
    w = conv.weight.detach()  # (Cin, Cout, 2, 2)
    cin, cout = w.shape[:2]
    weight = w.permute(2, 3, 1, 0).reshape(4 * cout, cin).contiguous()
    bias = (conv.bias.detach() if conv.bias is not None else torch.zeros(cout)).repeat(4)
    return weight, bias


def supported(mask_decoder: nn.Module) -> bool:
    """True when the decoder's upscaling is SAM's (ConvT k2s2, LayerNorm2d, GELU, ConvT k2s2, GELU)."""
    up = getattr(mask_decoder, "output_upscaling", None)
    if not isinstance(up, nn.Sequential) or len(up) != 5:
        return False
    convs = (up[0], up[3])
    return (all(isinstance(c, nn.ConvTranspose2d) and tuple(c.kernel_size) == (2, 2) and tuple(c.stride) == (2, 2)
                and tuple(c.padding) == (0, 0) and tuple(c.output_padding) == (0, 0) and c.groups == 1
                and tuple(c.dilation) == (1, 1) for c in convs)
            and type(up[1]).__name__ == "LayerNorm2d" and all(isinstance(a, nn.GELU) and a.approximate == "none"
                                                              for a in (up[2], up[4])))


class FastMaskDecoder(nn.Module):
    """Mask token 0 logits and score from a MaskDecoder, built once from its trained weights."""

    def __init__(self, mask_decoder: nn.Module) -> None:
        super().__init__()
        if not supported(mask_decoder):
            raise ValueError("not SAM's output upscaling; trace the official MaskDecoder instead")
        self.md = mask_decoder
        up = mask_decoder.output_upscaling
        w1, b1 = _k2s2_as_linear(up[0])
        w2, b2 = _k2s2_as_linear(up[3])
        for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            self.register_buffer(name, t, persistent=False)
        self.c1, self.c2 = up[0].out_channels, up[3].out_channels
        self.ln = up[1]

    def forward(self, embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                no_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (1,256,h,w), image_pe (1,256,h,w), sparse (N,T,256), no_mask (256,)
        -> logits (N,1,4h,4w), iou (N,1)."""
        md = self.md
        n = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat((out_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
        src = embedding + no_mask.reshape(1, -1, 1, 1)
        _, c, h, w = src.shape
        # Batch 1 on the image side: the transformer's attention broadcasts it over the prompts.
        hs, keys = md.transformer(src, image_pe, tokens)  # keys (N, h*w, c) after the first layer
        x = F.linear(keys, self.w1, self.b1).reshape(n, h, w, 2, 2, self.c1)
        x = F.gelu(F.layer_norm(x, (self.c1,), self.ln.weight, self.ln.bias, self.ln.eps))
        x = F.gelu(F.linear(x, self.w2, self.b2))  # (N, h, w, 2, 2, 4*c2), channels (i2, j2, co)
        hyper = md.output_hypernetworks_mlps[0](hs[:, 1, :])  # mask token 0: (N, c2)
        m = x.reshape(n, h * w * 16, self.c2) @ hyper.unsqueeze(-1)
        # Pixel (4y + 2i + i2, 4x + 2j + j2) from (y, x, i, j, i2, j2).
        m = m.reshape(n, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6).reshape(n, 1, 4 * h, 4 * w)
        iou = md.iou_prediction_head(hs[:, 0, :])[:, 0:1]
        return m, iou
