"""TinyViT image encoder of LiteMedSAM, in plain torch (inference only).

Module and parameter names follow the LiteMedSAM checkpoint, so the `image_encoder.*`
entries of `lite_medsam.pth` (prefix stripped) load with `strict=True`.

Unlike the ImageNet TinyViT, the patch embedding is two 1x1 stride-1 convs (stage 0 runs
at full 256x256) and the merge into the last stage keeps the resolution, so stages 2 and 3
both run at 64x64. A SAM-style neck maps those features to 256 channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """Bias-free conv then BatchNorm (checkpoint keys `c.*`, `bn.*`); 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """(B, in_chans, H, W) -> (B, dim, H, W): two pointwise ConvBNs, no downsampling."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted-residual block, (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        # The activation comes after the residual sum, unlike MobileNetV2.
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """(B, C, H, W) -> (B, C', H/stride, W/stride): pointwise, depthwise 3x3, pointwise."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention inside one window, with a learned relative-position bias.

    (B, N, C) -> (B, N, C), N = window * window. Pre-norm is part of this module.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # One bias per head and per |dy|, |dx| offset; offset (dy, dx) sits at dy * window + dx.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        # Neither buffer is in the checkpoint: both derive from the window and the table.
        self.register_buffer("bias_idxs", idx, persistent=False)
        self.register_buffer("attn_bias", torch.empty(0), persistent=False)
        self.refresh_bias()
        self.register_load_state_dict_post_hook(Attention.refresh_bias)

    @torch.no_grad()
    def refresh_bias(self, *_: object) -> None:
        """Re-gather the (heads, N, N) bias; runs on every load_state_dict.

        Gathered ahead so forward and the ONNX graph see one constant: a gather at run time
        is too big for the exporter to fold (window 14). Call after editing the table by hand.
        """
        self.attn_bias = self.attention_biases[:, self.bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # The checkpoint's qkv output is laid out per head as [q | k | v].
        qkv = self.qkv(self.norm(x)).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attn_bias
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    """Pre-norm two-layer MLP on the last dim."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv, MLP. (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        # Shapes are static, so these branches are fixed at export time. The zero padding
        # is not masked: padded tokens take part as keys, exactly as in the trained model.
        pad_h, pad_w = -h % ws, -w % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        nh, nw = (h + pad_h) // ws, (w + pad_w) // ws
        x = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.reshape(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        if pad_h or pad_w:
            x = x[:, :h, :w]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.window_attention(x)
        # No residual around the local conv: it replaces x.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class Stage(nn.Module):
    """Blocks at one resolution, then an optional PatchMerging. (B, C, H, W) -> (B, C', H', W').

    Attention blocks work channels-last; the stage converts around them.
    """

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None, channels_last: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class TinyViT(nn.Module):
    """TinyViT encoder with SAM neck: (B, in_chans, S, S) -> (B, out_chans, S/4, S/4) for 4 stages.

    Stage 0 is MBConv blocks, later ones attention blocks. Every merge halves the resolution
    but the last, which keeps it. Inference only: use `.eval()` (BatchNorm running stats).
    `img_size` is read by SAM's wrapper for padding; the layers take any size.
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        n = len(depths)
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                args = (dim, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                blocks = [TinyViTBlock(*args) for _ in range(depth)]
            merge = PatchMerging(dim, embed_dims[i + 1], 1 if i == n - 2 else 2) if i < n - 1 else None
            self.layers.append(Stage(blocks, merge, channels_last=i > 0))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


def build_lite_medsam_encoder() -> TinyViT:
    """LiteMedSAM's encoder, randomly initialised, in eval mode: (B, 3, 256, 256) -> (B, 256, 64, 64)."""
    return TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
    ).eval()
