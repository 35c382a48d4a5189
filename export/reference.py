"""The PyTorch reference predictor: the yardstick every faster path is measured against.

It reproduces the published inference scripts step by step:
- medsam_vit_b: MedSAM's inference script (scikit-image cubic resize with anti-aliasing
  to 1024x1024, min-max, box scaled by 1024/[W,H,W,H], mask token 0, sigmoid, bilinear
  resize of the probabilities, > 0.5);
- lite_medsam: LiteMedSAM's inference script (OpenCV INTER_AREA resize of the longest
  side to 256, min-max, zero pad, box scaled by 256/max(H,W), crop the padded logits,
  bilinear resize, sigmoid > 0.5);
- sam_vit_b: SamPredictor (PIL bilinear resize of the longest side to 1024, mean/std,
  pad, logits upsampled to 1024, cropped, resized, > 0).
The preprocessing here is deliberately the reference libraries', not the runtime's
OpenCV version: the runtime is measured against this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsam_edge.contract import Preprocess
from medsam_edge.export.wrappers import decode_boxes
from medsam_edge.runtime.geometry import boxes_to_model, longest_side_hw


@dataclass
class TorchPrepared:
    """A frame as the encoder sees it, with what is needed to map boxes and masks."""

    tensor: torch.Tensor  # (1, 3, S, S) float32
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]  # size of the image inside the S x S input before padding


def prepare(image: np.ndarray, pre: Preprocess) -> TorchPrepared:
    """image: HxWx3 uint8 RGB (grey HxW is repeated to 3 channels, as MedSAM does)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    h, w = image.shape[:2]
    s = pre.size
    if pre.resize == "stretch":
        from skimage import transform

        resized = transform.resize(image, (s, s), order=3, preserve_range=True, anti_aliasing=True)
        resized = resized.astype(np.uint8)
        rh, rw = s, s
    elif pre.interpolation == "area":
        import cv2

        rh, rw = longest_side_hw(h, w, s)
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
    else:
        from PIL import Image

        rh, rw = longest_side_hw(h, w, s)
        resized = np.array(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
    x = resized.astype(np.float64 if pre.normalize == "minmax" else np.float32)
    if pre.normalize == "minmax":
        x = (x - x.min()) / np.clip(x.max() - x.min(), a_min=1e-8, a_max=None)
    else:
        x = (x - np.array(pre.mean)) / np.array(pre.std)
    t = torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]
    # Pad bottom/right after normalisation, as SAM and LiteMedSAM do.
    t = F.pad(t, (0, s - rw, 0, s - rh))
    return TorchPrepared(t, (h, w), (rh, rw))


class ReferenceProcessing:
    """The reference scripts' pixels in and out, for runtime.segmenter.Segmenter: with the
    torch backend it is the PyTorch reference path, timed stage by stage like any row."""

    name = "reference"

    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre

    def prepare(self, image: np.ndarray):
        from medsam_edge.runtime.preprocess import Prepared

        p = prepare(image, self.pre)
        return Prepared(p.tensor.numpy(), p.original_hw, p.resized_hw)

    def masks(self, logits: np.ndarray, original_hw: tuple[int, int], resized_hw: tuple[int, int]) -> np.ndarray:
        return logits_to_masks(torch.from_numpy(np.asarray(logits, np.float32)),
                               TorchPrepared(None, original_hw, resized_hw), self.pre)


class ReferencePredictor:
    """set_image once, predict many boxes: the segment-anything SamPredictor split."""

    def __init__(self, sam: nn.Module, pre: Preprocess) -> None:
        self.sam = sam.eval()
        self.pre = pre
        self.prepared: TorchPrepared | None = None
        self.embedding: torch.Tensor | None = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> torch.Tensor:
        self.prepared = prepare(image, self.pre)
        self.embedding = self.sam.image_encoder(self.prepared.tensor)
        return self.embedding

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor, model_boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes in the model frame -> mask-token-0 logits (N,1,256,256) and iou (N,1)."""
        return decode_boxes(self.sam, embedding, torch.as_tensor(model_boxes, dtype=torch.float32))

    @torch.no_grad()
    def predict(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """boxes (N,4) in original pixels -> masks (N,H,W) bool and iou (N,)."""
        if self.prepared is None or self.embedding is None:
            raise RuntimeError("call set_image() before predict()")
        p = self.prepared
        logits, iou = self.decode(self.embedding, boxes_to_model(boxes, p.original_hw, p.resized_hw))
        return logits_to_masks(logits, p, self.pre), iou[:, 0].numpy()


def logits_to_masks(logits: torch.Tensor, p: TorchPrepared, pre: Preprocess) -> np.ndarray:
    """(N,1,256,256) logits -> (N,H,W) bool, following each reference script."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    hw = p.original_hw
    if pre.mask_from == "full":
        if pre.sigmoid_first:
            prob = F.interpolate(torch.sigmoid(logits), size=hw, mode="bilinear", align_corners=False)
            return (prob > 0.5)[:, 0].numpy()
        x = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
    elif pre.mask_from == "crop":
        # LiteMedSAM crops the 256 logits at the resized size (its input size is 256 too).
        x = logits[..., : p.resized_hw[0], : p.resized_hw[1]]
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    else:
        x = F.interpolate(logits, size=(pre.size, pre.size), mode="bilinear", align_corners=False)
        x = x[..., : p.resized_hw[0], : p.resized_hw[1]]
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    return (torch.sigmoid(x) > 0.5)[:, 0].numpy()
