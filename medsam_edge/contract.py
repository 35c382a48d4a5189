"""The tensor contract between export, engines, calibration and runtime.

Every ONNX input/output name, dtype and shape lives here and nowhere else, so a
renamed tensor is one edit. Also the preprocessing each model id expects, as plain
data the runtime can apply without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# SAM's prompt encoder and mask decoder are shared by every model id.
EMBED_DIM = 256
EMBED_HW = 64
LOW_RES_HW = 256

# The decoder's two dynamic axes, (min, opt, max): TensorRT optimisation profiles and the
# Triton configs read them from here. A prompt is one object to segment; its points are
# its clicks plus, for a box, the box's two corners. The runtime sends more prompts than
# DECODER_BATCH_MAX in chunks; more points than POINTS_MAX in one prompt is refused.
PROMPTS_RANGE = (1, 1, 16)
POINTS_RANGE = (1, 2, 10)
DECODER_BATCH_MAX = PROMPTS_RANGE[2]  # prompts per decoder call (runtime.prompts caps them per frame)
# The old name, kept until engines/select.py (another branch) imports DECODER_BATCH_MAX.
PROMPTS_MAX = DECODER_BATCH_MAX
POINTS_MAX = POINTS_RANGE[2]
AXES = {"num_prompts": PROMPTS_RANGE, "num_points": POINTS_RANGE}

# Point labels, as SAM's own ONNX export encodes prompts: a box is two corner points
# labelled BOX_TOP_LEFT and BOX_BOTTOM_RIGHT after the prompt's clicks; a prompt without
# a box ends with one PADDING point (what SAM's prompt encoder appends itself).
PADDING, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3
CLICK_LABELS = (NEGATIVE, POSITIVE)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor. A str in `shape` is a dynamic axis with that name."""

    name: str
    dtype: str
    shape: tuple

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


IMAGE = "image"
EMBEDDING = "embedding"
POINT_COORDS = "point_coords"
POINT_LABELS = "point_labels"
LOW_RES_LOGITS = "low_res_logits"
IOU = "iou"


def encoder_inputs(size: int) -> tuple[TensorSpec, ...]:
    """Encoder input: the preprocessed image, (1, 3, size, size) float32."""
    return (TensorSpec(IMAGE, "float32", (1, 3, size, size)),)


ENCODER_OUTPUTS = (TensorSpec(EMBEDDING, "float32", (1, EMBED_DIM, EMBED_HW, EMBED_HW)),)
DECODER_INPUTS = (
    TensorSpec(EMBEDDING, "float32", (1, EMBED_DIM, EMBED_HW, EMBED_HW)),
    # x, y in the model's input pixel frame (after resize), per prompt and point.
    TensorSpec(POINT_COORDS, "float32", ("num_prompts", "num_points", 2)),
    # One of the labels above per point; float, as in SAM's ONNX export.
    TensorSpec(POINT_LABELS, "float32", ("num_prompts", "num_points")),
)
DECODER_OUTPUTS = (
    TensorSpec(LOW_RES_LOGITS, "float32", ("num_prompts", 1, LOW_RES_HW, LOW_RES_HW)),
    TensorSpec(IOU, "float32", ("num_prompts", 1)),
)


def prompt_tokens(box, points=None, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """One prompt -> (coords (P, 2) float32, labels (P,) float32), in whatever pixel frame
    the inputs are in: the clicks first, then the box's two corners, or a padding point
    when there is no box. The order and the padding are segment-anything's PromptEncoder's,
    so a box-only prompt is exactly the two tokens the MedSAM reference feeds its decoder.
    """
    pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    lab = np.zeros(0, np.float32) if labels is None else np.asarray(labels, np.float32).reshape(-1)
    if box is None:
        tail_c, tail_l = np.zeros((1, 2), np.float32), np.array([PADDING], np.float32)
    else:
        tail_c = np.asarray(box, np.float32).reshape(2, 2)
        tail_l = np.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], np.float32)
    return np.concatenate([pts, tail_c]), np.concatenate([lab, tail_l])


def box_tokens(boxes) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) boxes -> the decoder's (N, 2, 2) coords and (N, 2) labels for box-only prompts."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.tile(np.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], np.float32), (len(b), 1))
    return b.reshape(-1, 2, 2), labels


@dataclass(frozen=True)
class Preprocess:
    """How a frame becomes the encoder input, and how boxes and masks map back.

    resize: "stretch" (both sides to `size`, aspect ratio lost: MedSAM) or
            "longest_side" (longest side to `size`, pad bottom/right: SAM, LiteMedSAM).
    normalize: "minmax" (whole image to [0, 1]) or "mean_std" (0..255 minus mean, over std).
    mask_from: "full" (logits cover the whole input square) or "crop" (crop the padded
            part of the 256x256 logits first, as LiteMedSAM's postprocess does) or
            "upsample_crop" (SAM: upsample logits to `size`, crop, then resize).
    interpolation: the reference script's resize: "cubic_antialias" (scikit-image
            order=3 with anti-aliasing, MedSAM), "area" (OpenCV INTER_AREA, LiteMedSAM),
            "bilinear_antialias" (PIL bilinear, SAM). The runtime uses its nearest OpenCV
            equivalent; the difference is measured, not assumed.
    sigmoid_first: MedSAM's script takes the sigmoid of the 256x256 logits and resizes the
            probabilities; LiteMedSAM and SAM resize the logits. Bilinear resizing does not
            commute with the sigmoid, so the boundary pixels differ: we follow each script.
    """

    size: int
    resize: str
    normalize: str
    mask_from: str
    interpolation: str = "area"
    sigmoid_first: bool = False
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)

    def to_json(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Preprocess":
        return cls(
            size=int(d["size"]),
            resize=d["resize"],
            normalize=d["normalize"],
            mask_from=d["mask_from"],
            interpolation=d.get("interpolation", "area"),
            sigmoid_first=bool(d.get("sigmoid_first", False)),
            mean=tuple(d.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(d.get("std", (1.0, 1.0, 1.0))),
        )


@dataclass(frozen=True)
class ModelSpec:
    """A model id as the runtime sees it: input size and preprocessing (no torch)."""

    model_id: str
    preprocess: Preprocess
    description: str = ""
    test_only: bool = False
    # Fine-tuned on box prompts only (MedSAM, LiteMedSAM): a click refines a box, and
    # clicks alone give poor or empty masks. SAM itself was trained on clicks too.
    box_trained: bool = True


_MEDSAM = Preprocess(
    size=1024,
    resize="stretch",
    normalize="minmax",
    mask_from="full",
    interpolation="cubic_antialias",
    sigmoid_first=True,
)
_LITE = Preprocess(size=256, resize="longest_side", normalize="minmax", mask_from="crop", interpolation="area")
_SAM = Preprocess(
    size=1024,
    resize="longest_side",
    normalize="mean_std",
    mask_from="upsample_crop",
    interpolation="bilinear_antialias",
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
)

MODELS: dict[str, ModelSpec] = {
    "medsam_vit_b": ModelSpec("medsam_vit_b", _MEDSAM, "MedSAM, SAM ViT-B fine-tuned on medical images"),
    "lite_medsam": ModelSpec("lite_medsam", _LITE, "LiteMedSAM, TinyViT encoder at 256x256"),
    "sam_vit_b": ModelSpec("sam_vit_b", _SAM, "original SAM ViT-B", box_trained=False),
    # Same code as medsam_vit_b at a fraction of the width and depth, for tests on a 2-core CPU.
    "medsam_vit_tiny": ModelSpec("medsam_vit_tiny", _MEDSAM, "tiny ViT, tests only", test_only=True),
    "sam_vit_tiny": ModelSpec("sam_vit_tiny", _SAM, "tiny ViT with SAM preprocessing, tests only", test_only=True,
                              box_trained=False),
}

USER_MODELS = tuple(k for k, v in MODELS.items() if not v.test_only)


def model_spec(model_id: str) -> ModelSpec:
    try:
        return MODELS[model_id]
    except KeyError:
        from medsam_edge.errors import InputError

        raise InputError(f"unknown model id {model_id!r}; expected one of {', '.join(MODELS)}") from None


@dataclass(frozen=True)
class Precision:
    """One precision a user can ask for, and the files that carry it.

    files: per part, the ONNX files that run it, preferred first (a reduced-precision
        decoder is optional: the FP32 one stands in). "bf16" has no files of its own: it
        is an inference precision a backend applies to the FP32 files.
    made_by: the command that writes the files ("export", "calibrate"; "runtime" for bf16).
    runs_on: backend families that execute it as written.
    """

    name: str
    files: dict
    made_by: str
    runs_on: tuple
    description: str


_ALL_ENGINES = ("onnxruntime", "openvino", "tensorrt", "triton")
PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", {"encoder": ("encoder.onnx",), "decoder": ("decoder.onnx",)}, "export", _ALL_ENGINES,
                  "the exported FP32 files"),
        Precision("fp16", {"encoder": ("encoder.fp16.onnx",), "decoder": ("decoder.fp16.onnx", "decoder.onnx")},
                  "calibrate", _ALL_ENGINES, "FP16 mixed precision (FP32 I/O, fragile nodes FP32 by measurement)"),
        Precision("int8", {"encoder": ("encoder.int8.onnx",), "decoder": ("decoder.int8.onnx", "decoder.onnx")},
                  "calibrate", _ALL_ENGINES, "INT8 Q/DQ on the Conv/MatMul inputs (TensorRT's explicit quantization)"),
        Precision("int8dyn", {"encoder": ("encoder.int8dyn.onnx",), "decoder": ("decoder.onnx",)}, "calibrate",
                  ("onnxruntime",), "dynamic INT8 (MatMulInteger): onnxruntime's CPU provider only"),
        Precision("bf16", {"encoder": ("encoder.onnx",), "decoder": ("decoder.onnx",)}, "runtime", ("openvino",),
                  "the FP32 files run at BF16 inference precision (CPUs with AVX-512 BF16 or AMX)"),
    )
}


def parse_precisions(text: str, allowed=tuple(PRECISIONS), option: str = "--precision") -> tuple[str, ...]:
    """'fp32,fp16' -> ('fp32', 'fp16'), in the order given; anything outside `allowed` is a one-line error."""
    out = tuple(dict.fromkeys(p.strip().lower() for p in str(text).split(",") if p.strip()))
    bad = [p for p in out if p not in allowed]
    if bad or not out:
        from medsam_edge.errors import InputError

        raise InputError(f"{option} {text!r}: expected a comma-separated list of {', '.join(allowed)}")
    return out
