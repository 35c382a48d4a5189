"""Box prompts and ground truth for the held-out frames.

Where a frame has a ground-truth mask (a mask folder with the same file names, as BUSI
and Kvasir-SEG ship them) each connected lesion gives one box, its bounding box, and
that lesion is the truth the masks are scored against. Otherwise boxes come from a JSON
file ({"name": [[x0, y0, x1, y1], ...]} or Kvasir-SEG's bboxes.json), and frames with
neither get a centre box that the evaluation tightens onto the reference mask (the way
the runtime propagates a box from the last mask), so unannotated clips still count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from medsam_edge.errors import InputError
from medsam_edge.runtime.geometry import centre_box

from .frames import FrameSet

# A connected piece of a mask smaller than this share of the largest piece is JPEG noise.
MIN_PIECE = 0.05
_MASK_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class EvalBox:
    """One box on one frame, in the frame's original pixels, and its truth if known."""

    box: np.ndarray  # (4,) float32 x0, y0, x1, y1
    truth: np.ndarray | None  # (H, W) bool
    origin: str  # "mask", "file" or "derived"


def load_prompts(
    frames: FrameSet,
    indices: Sequence[int],
    box_files: Sequence[str] = (),
    mask_dirs: Sequence[str] = (),
) -> dict[int, list[EvalBox]]:
    """Prompts for each frame in `indices`: from masks, else box files, else a centre box."""
    table = _read_box_files(box_files)
    dirs = [Path(d) for d in mask_dirs]
    for d in dirs:
        if not d.is_dir():
            raise InputError(f"--masks {d}: not a folder")
    out: dict[int, list[EvalBox]] = {}
    for i in indices:
        m = frames.meta[i]
        h, w = m["original_hw"]
        prompts = _from_mask(m["name"], dirs, (h, w))
        if not prompts:
            boxes = _lookup(table, m["name"])
            prompts = [EvalBox(_clip(b, h, w), None, "file") for b in boxes]
        out[i] = prompts or [EvalBox(centre_box(h, w), None, "derived")]
    return out


def tighten(box: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The bounding box of `mask` if it is a plausible object (0.5-90 % of the frame), else `box`."""
    share = float(mask.mean()) if mask.size else 0.0
    if not 0.005 <= share <= 0.9:
        return box
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _from_mask(name: str, dirs: list[Path], hw: tuple[int, int]) -> list[EvalBox]:
    stem = Path(name).stem
    for d in dirs:
        for cand in [d / name] + [d / f"{stem}{e}" for e in _MASK_EXT]:
            if cand.is_file():
                return _pieces(_read_mask(cand, hw))
    return []


def _read_mask(path: Path, hw: tuple[int, int]) -> np.ndarray:
    m = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise InputError(f"{path}: mask is not a readable image")
    if m.shape != tuple(hw):
        raise InputError(f"{path}: mask is {m.shape[1]}x{m.shape[0]}, its image {hw[1]}x{hw[0]}")
    return m > 127  # JPEG masks (Kvasir-SEG) are not exactly 0/255


def _pieces(mask: np.ndarray) -> list[EvalBox]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return []  # an empty mask (a normal case) has nothing to prompt for
    areas = stats[1:, cv2.CC_STAT_AREA]
    out = []
    for k in np.nonzero(areas >= MIN_PIECE * areas.max())[0] + 1:
        x, y, bw, bh = stats[k, :4]
        out.append(EvalBox(np.array([x, y, x + bw, y + bh], np.float32), labels == k, "mask"))
    return out


def _read_box_files(paths: Sequence[str]) -> dict[str, list]:
    table: dict[str, list] = {}
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"--boxes {p}: not a readable JSON file ({e})") from None
        if not isinstance(data, dict):
            raise InputError(f"--boxes {p}: expected an object mapping frame names to boxes")
        for key, entry in data.items():
            table[str(key)] = _parse_entry(entry, p, key)
    return table


def _parse_entry(entry, path, key) -> list[np.ndarray]:
    if isinstance(entry, dict):
        entry = entry.get("bbox", entry.get("boxes", []))
    boxes = []
    for b in entry if isinstance(entry, list) else []:
        if isinstance(b, dict):
            b = [b.get("xmin"), b.get("ymin"), b.get("xmax"), b.get("ymax")]
        try:
            arr = np.asarray(b, np.float32).reshape(4)
        except (TypeError, ValueError):
            raise InputError(f"--boxes {path}: {key!r}: a box is not four numbers x0, y0, x1, y1") from None
        if not np.isfinite(arr).all() or arr[2] <= arr[0] or arr[3] <= arr[1]:
            raise InputError(f"--boxes {path}: {key!r}: box {arr.tolist()} is empty or not finite")
        boxes.append(arr)
    return boxes


def _lookup(table: dict[str, list], name: str) -> list:
    """By file name, stem, or a key the stem ends with (kvasirseg_<id> finds <id>)."""
    stem = Path(name).stem
    for key in (name, stem):
        if key in table:
            return table[key]
    for key, boxes in table.items():
        if stem.endswith("_" + key) or name.startswith(key + "#"):
            return boxes
    return []


def _clip(box: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.clip(box, 0, [w, h, w, h]).astype(np.float32)
