"""Masks on real pixels: Dice against ground truth, exported ONNX next to the PyTorch reference,
and which prompt kinds help.

Each image is prompted with its ground-truth mask's bounding box. The ONNX path is the
runtime's (OpenCV preprocessing, onnxruntime); the reference is the PyTorch predictor
that reproduces the published inference script. The prompt comparison runs the runtime's
own code for each kind: the box; the box refined by a second pass with its mask's
centroid (`run --refine`, TextSAM-EUS's box + centroid); the box with the ground truth's
centroid as a click (what a clinician's tap could add at best); that click alone. With
random ViT-B weights these figures say nothing: use LiteMedSAM's real weights or your
MedSAM checkpoint.

    python -m medsam_edge.bench.ground_truth models/lite_medsam --data ../shared/data --out out/ground_truth.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from medsam_edge.atomic import write_json
from medsam_edge.export.checkpoint import bundled_lite_checkpoint, load_weights
from medsam_edge.export.models import build_model
from medsam_edge.export.reference import ReferencePredictor
from medsam_edge.metrics import dice
from medsam_edge.runtime import Predictor

SETS = {
    "busi (breast ultrasound)": ("ultrasound/busi/images", "ultrasound/busi/masks"),
    "kvasir-seg (colonoscopy)": ("endoscopy/kvasir_seg/images", "endoscopy/kvasir_seg/masks"),
}


def pairs(data: Path, images: str, masks: str):
    for img_path in sorted((data / images).iterdir()):
        mask_path = data / masks / img_path.name
        if not mask_path.is_file():
            continue
        rgb = cv2.cvtColor(cv2.imread(str(img_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
        if gt.shape != rgb.shape[:2] or not gt.any():
            continue  # normal cases have no lesion to prompt for
        ys, xs = np.nonzero(gt)
        yield img_path.name, rgb, gt, np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


PROMPT_KINDS = ("box", "box_refined", "box_gt_click", "click_alone")


def prompt_variants(predictor: Predictor, rgb: np.ndarray, gt: np.ndarray, box: np.ndarray) -> dict[str, float]:
    """Dice against ground truth of each prompt kind, through the runtime's own paths."""
    from medsam_edge.runtime.prompts import Prompt
    from medsam_edge.runtime.tracker import centroid_click

    with predictor.session(prompts=box, refine=True, reuse="off") as s:
        refined = s.process(rgb).masks[0]
    click = centroid_click(gt)
    predictor.set_image(rgb)
    plain = predictor.predict(boxes=box)[0][0]
    with_click = predictor.predict(prompts=[Prompt.of(box=box[0], points=[click])])[0][0]
    alone = predictor.predict(prompts=[Prompt.of(points=[click])])[0][0]
    return {k: dice(m, gt) for k, m in zip(PROMPT_KINDS, (plain, refined, with_click, alone))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--checkpoint", type=Path, help="checkpoint for the reference (lite_medsam: bundled)")
    ap.add_argument("--out", type=Path, default=Path("out/ground_truth.json"))
    args = ap.parse_args(argv)

    onnx = Predictor(args.model_dir, backend="onnxruntime-cpu")
    model_id = onnx.model_dir.model_id
    sam = build_model(model_id)
    load_weights(sam, args.checkpoint or bundled_lite_checkpoint(), model_id)
    ref = ReferencePredictor(sam, onnx.model_dir.preprocess)

    rows, summary = [], {}
    for name, (images, masks) in SETS.items():
        scores = []
        for fname, rgb, gt, box in pairs(args.data, images, masks):
            onnx.set_image(rgb)
            m_onnx = onnx.predict(box)[0][0]
            ref.set_image(rgb)
            m_ref = ref.predict(box)[0][0]
            row = {"set": name, "image": fname, "dice_onnx_gt": dice(m_onnx, gt), "dice_ref_gt": dice(m_ref, gt),
                   "dice_onnx_ref": dice(m_onnx, m_ref),
                   **{f"prompt_{k}": v for k, v in prompt_variants(onnx, rgb, gt, box).items()}}
            rows.append(row)
            scores.append(row)
            print(f"{fname:45s} onnx/gt {row['dice_onnx_gt']:.4f}  ref/gt {row['dice_ref_gt']:.4f}  "
                  f"onnx/ref {row['dice_onnx_ref']:.4f}", file=sys.stderr)
        summary[name] = {
            "images": len(scores),
            **{f"{k}_{stat}": round(float(f(np.array([s[k] for s in scores]))), 4)
               for k in ("dice_onnx_gt", "dice_ref_gt", "dice_onnx_ref", *(f"prompt_{p}" for p in PROMPT_KINDS))
               for stat, f in (("mean", np.mean), ("min", np.min))},
        }
    report = {"model": model_id, "model_dir": str(args.model_dir), "summary": summary, "rows": rows}
    write_json(args.out, report)
    print("| set | images | Dice ONNX vs GT (mean / min) | Dice PyTorch ref vs GT (mean / min) | Dice ONNX vs ref (mean / min) |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['images']} | {s['dice_onnx_gt_mean']:.4f} / {s['dice_onnx_gt_min']:.4f} | "
              f"{s['dice_ref_gt_mean']:.4f} / {s['dice_ref_gt_min']:.4f} | "
              f"{s['dice_onnx_ref_mean']:.4f} / {s['dice_onnx_ref_min']:.4f} |")
    print()
    print("| set | " + " | ".join(f"{k} (mean / min)" for k in PROMPT_KINDS) + " |")
    print("|---|" + "---|" * len(PROMPT_KINDS))
    for name, s in summary.items():
        print(f"| {name} | " + " | ".join(f"{s[f'prompt_{k}_mean']:.4f} / {s[f'prompt_{k}_min']:.4f}"
                                           for k in PROMPT_KINDS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
