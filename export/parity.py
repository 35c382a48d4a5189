"""Parity of exported ONNX files against the PyTorch reference, with explicit tolerances.

Three comparisons on a real frame: the encoder's embedding for the same preprocessed
input, the decoder's logits for the same embedding and boxes, and the masks of the
whole exported path (ONNX encoder -> ONNX decoder -> the reference's postprocess)
against the reference's masks. Run on onnxruntime's CPU provider, the one that exists
everywhere, opened by engines.loaders.open_files with the session options the runtime
uses; the other side is segment-anything's own modules (export.reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsam_edge.contract import Preprocess, box_tokens, prompt_tokens
from medsam_edge.engines.loaders import open_files
from medsam_edge.errors import ParityError
from medsam_edge.export.reference import ReferencePredictor, logits_to_masks
from medsam_edge.export.wrappers import decode_official
from medsam_edge.metrics import cosine, dice, rel_err
from medsam_edge.runtime.geometry import boxes_to_model

# Per output, the statistic and the bound it must meet.
TOLERANCES = {
    "embedding_rel_err": ("max", 1e-4),
    "logits_rel_err": ("max", 1e-4),
    "point_logits_rel_err": ("max", 1e-4),
    "mask_dice_min": ("min", 0.999),
}

# pydicom's bundled echocardiography cine: always installed with the runtime, so parity
# runs on real ultrasound pixels on every machine. The boxes frame a cardiac chamber and
# a larger region (two boxes also exercise the dynamic box axis).
PARITY_SOURCE = "examples_ybr_color.dcm"
PARITY_BOXES = np.array([[125, 128, 200, 170], [100, 40, 220, 180]], dtype=np.float32)


def parity_frame() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(PARITY_SOURCE))
    # pydicom 3 converts YBR_FULL_422 to RGB in pixel_array.
    return np.ascontiguousarray(ds.pixel_array[0])


def check_parity(
    sam: torch.nn.Module,
    pre: Preprocess,
    encoder_onnx: Path,
    decoder_onnx: Path,
    image: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> dict:
    """Measure; return the figures with a `passed` flag (raising is the caller's choice)."""
    frame_label = f"pydicom:{PARITY_SOURCE}[0]" if image is None else "caller's frame"
    image = parity_frame() if image is None else image
    boxes = PARITY_BOXES if boxes is None else np.asarray(boxes, np.float32)
    ref = ReferencePredictor(sam, pre)
    ref_emb = ref.set_image(image)
    ref_masks, _ = ref.predict(boxes)
    p = ref.prepared
    model_boxes = boxes_to_model(boxes, p.original_hw, p.resized_hw)
    ref_logits, ref_iou = ref.decode(ref_emb, model_boxes)

    with open_files(encoder_onnx, decoder_onnx) as exported:
        emb = exported.encode(p.tensor.numpy())
        # Box-only prompts, the MedSAM path: the traced decoder against the reference's own call.
        logits_same_emb, iou_same = exported.decode(ref_emb.numpy(), *box_tokens(model_boxes))
        logits, _ = exported.decode(emb, *box_tokens(model_boxes))
        # Clicks with and without a box, against segment-anything's PromptEncoder given the same.
        point_logits = []
        for tokens in _click_prompts(model_boxes):
            coords, labels = (np.stack(t) for t in zip(*tokens))
            got, _ = exported.decode(ref_emb.numpy(), coords, labels)
            with torch.no_grad():
                want, _ = decode_official(ref.sam, ref_emb, torch.from_numpy(coords), torch.from_numpy(labels))
            point_logits.append(rel_err(got, want.numpy()))
    masks = logits_to_masks(torch.from_numpy(logits), p, pre)

    dices = [dice(a, b) for a, b in zip(masks, ref_masks)]
    figures = {
        "embedding_rel_err": rel_err(emb, ref_emb.numpy()),
        "embedding_max_abs": float(np.abs(emb - ref_emb.numpy()).max()),
        "embedding_cosine": cosine(emb, ref_emb.numpy()),
        "logits_rel_err": rel_err(logits_same_emb, ref_logits.numpy()),
        "point_logits_rel_err": max(point_logits),
        "iou_max_abs": float(np.abs(iou_same - ref_iou.numpy()).max()),
        "mask_dice": [round(d, 6) for d in dices],
        "mask_dice_min": min(dices),
        "reference_mask_area": [int(m.sum()) for m in ref_masks],
        "frame": frame_label,
        "boxes": boxes.tolist(),
        "tolerances": {k: {"stat": s, "bound": b} for k, (s, b) in TOLERANCES.items()},
    }
    figures["failed"] = [
        k for k, (stat, bound) in TOLERANCES.items()
        if (figures[k] > bound if stat == "max" else figures[k] < bound)
    ]
    figures["passed"] = not figures["failed"]
    return figures


def _click_prompts(model_boxes: np.ndarray) -> list[list[tuple]]:
    """Groups of same-layout prompts: each box with its centre as a positive click, and a
    positive centre click with a negative click at a corner, without a box."""
    centres = (model_boxes[:, :2] + model_boxes[:, 2:]) / 2
    with_box = [prompt_tokens(b, [c], [1]) for b, c in zip(model_boxes, centres)]
    clicks = [prompt_tokens(None, [c, b[:2]], [1, 0]) for b, c in zip(model_boxes, centres)]
    return [with_box, clicks]


def require_parity(figures: dict, where: str) -> None:
    if not figures["passed"]:
        worst = ", ".join(
            f"{k}={figures[k]:.3g} (bound {TOLERANCES[k][1]:g})" for k in figures["failed"]
        )
        raise ParityError(f"{where}: ONNX disagrees with the PyTorch reference: {worst}; nothing was written")
