"""The tensor contract between export, engines, calibration and runtime.

Every ONNX input/output name, dtype and shape lives here and nowhere else, so a
renamed tensor is one edit. Also the preprocessing each model id expects, as plain
data the runtime can apply without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# SAM's prompt encoder and mask decoder are shared by every model id.
EMBED_DIM = 256
EMBED_HW = 64
LOW_RES_HW = 256

# Decoder box count: TensorRT optimisation profiles use these as min/opt/max.
BOXES_MIN, BOXES_OPT, BOXES_MAX = 1, 1, 16


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
BOXES = "boxes"
LOW_RES_LOGITS = "low_res_logits"
IOU = "iou"


def encoder_inputs(size: int) -> tuple[TensorSpec, ...]:
    """Encoder input: the preprocessed image, (1, 3, size, size) float32."""
    return (TensorSpec(IMAGE, "float32", (1, 3, size, size)),)


ENCODER_OUTPUTS = (TensorSpec(EMBEDDING, "float32", (1, EMBED_DIM, EMBED_HW, EMBED_HW)),)
DECODER_INPUTS = (
    TensorSpec(EMBEDDING, "float32", (1, EMBED_DIM, EMBED_HW, EMBED_HW)),
    # Boxes x0, y0, x1, y1 in the model's input pixel frame (after resize), N dynamic.
    TensorSpec(BOXES, "float32", ("num_boxes", 4)),
)
DECODER_OUTPUTS = (
    TensorSpec(LOW_RES_LOGITS, "float32", ("num_boxes", 1, LOW_RES_HW, LOW_RES_HW)),
    TensorSpec(IOU, "float32", ("num_boxes", 1)),
)


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
    "sam_vit_b": ModelSpec("sam_vit_b", _SAM, "original SAM ViT-B"),
    # Same code as medsam_vit_b at a fraction of the width and depth, for tests on a 2-core CPU.
    "medsam_vit_tiny": ModelSpec("medsam_vit_tiny", _MEDSAM, "tiny ViT, tests only", test_only=True),
    "sam_vit_tiny": ModelSpec("sam_vit_tiny", _SAM, "tiny ViT with SAM preprocessing, tests only", test_only=True),
}

USER_MODELS = tuple(k for k, v in MODELS.items() if not v.test_only)


def model_spec(model_id: str) -> ModelSpec:
    try:
        return MODELS[model_id]
    except KeyError:
        from medsam_edge.errors import InputError

        raise InputError(f"unknown model id {model_id!r}; expected one of {', '.join(MODELS)}") from None
