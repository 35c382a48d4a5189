"""Calibration frames: a few representative pictures from real sources, preprocessed as
the model directory says, split into a calibration part and a held-out part.

Frames are spread evenly over each source (clips, cine loops, image folders), so a long
clip does not crowd out a short one and no single moment of a clip dominates. Blank
frames (probe lifted) are passed over for the next picture with content. What is kept
is cached as an .npz keyed by the sources (path, size, mtime), the count, the split and
the preprocessing, so a second `calibrate` does not decode the videos again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from medsam_edge.atomic import atomic_path
from medsam_edge.contract import IMAGE, Preprocess
from medsam_edge.errors import InputError
from medsam_edge.runtime.geometry import resized_hw
# The runtime's own resize choice, so cached frames are resized exactly as it would.
from medsam_edge.runtime.preprocess import interpolation, preprocess
from medsam_edge.runtime.frame import is_blank
from medsam_edge.runtime.sources import open_source

CACHE_VERSION = 2  # 2: held-out frames from whole sources
MIN_FRAMES = 8  # below this a calibration histogram and a held-out figure mean little


@dataclass
class FrameSet:
    """Sampled frames, stored resized (uint8, S x S, padding zero) with their geometry.

    The float tensor is made on demand by runtime.preprocess from the resized picture:
    its resize is then the identity, so the tensor is exactly what the runtime would
    feed the encoder for the original frame, at a quarter of the cache size.
    """

    images: np.ndarray  # (N, S, S, 3) uint8
    meta: list[dict]  # source, index, name, original_hw, resized_hw, split
    pre: Preprocess

    def __len__(self) -> int:
        return len(self.meta)

    def tensor(self, i: int) -> np.ndarray:
        rh, rw = self.meta[i]["resized_hw"]
        return preprocess(self.images[i, :rh, :rw], self.pre).tensor

    def split(self, name: str) -> list[int]:
        return [i for i, m in enumerate(self.meta) if m["split"] == name]

    @property
    def calibration(self) -> list[int]:
        return self.split("calibration")

    @property
    def holdout(self) -> list[int]:
        return self.split("holdout")

    def spread(self, indices: Sequence[int], n: int) -> list[int]:
        """At most n of `indices`: every source's share as even as n allows (round robin over
        the sources), each share spread evenly over that source's frames (a clip's start and
        end differ more than two neighbouring frames do)."""
        by_source: dict[str, list[int]] = {}
        for i in indices:
            by_source.setdefault(self.meta[i]["source"], []).append(i)
        queues = list(by_source.values())
        counts = [0] * len(queues)
        while sum(counts) < n and any(c < len(q) for c, q in zip(counts, queues)):
            for j, q in enumerate(queues):
                if counts[j] < len(q) and sum(counts) < n:
                    counts[j] += 1
        out: list[int] = []
        for q, c in zip(queues, counts):
            if c == 1:
                out.append(q[len(q) // 2])
            elif c > 1:
                out += [q[round(k)] for k in np.linspace(0, len(q) - 1, c)]
        return sorted(out)

    def describe(self) -> dict:
        """What the manifest records: which frames, from where, in which split."""
        cal = sorted({self.meta[i]["source"] for i in self.calibration})
        held = sorted({self.meta[i]["source"] for i in self.holdout})
        return {
            "count": len(self),
            "calibration": len(self.calibration),
            "holdout": len(self.holdout),
            "sources": sorted({m["source"] for m in self.meta}),
            "calibration_sources": cal,
            "holdout_sources": held,
            # True when no held-out frame comes from a source the calibration saw.
            "holdout_sources_unseen": not set(cal) & set(held),
            "frames": [{k: m[k] for k in ("source", "index", "name", "split")} for m in self.meta],
        }


class FrameReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a FrameSet.

    A class that can be rewound, not a generator: calibration, sensitivity and checks
    each walk the same frames again.
    """

    def __init__(self, frames: FrameSet, indices: Sequence[int] | None = None, input_name: str = IMAGE) -> None:
        self.frames = frames
        self.indices = list(frames.calibration if indices is None else indices)
        self.input_name = input_name
        self._pos, self._end = 0, len(self.indices)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        self._pos += 1
        return {self.input_name: self.frames.tensor(self.indices[self._pos - 1])}

    def rewind(self) -> None:
        self._pos, self._end = 0, len(self.indices)

    def set_range(self, start_index: int, end_index: int) -> None:
        """onnxruntime's strided calibration: only frames [start, end) until the next rewind."""
        self._pos, self._end = start_index, min(end_index, len(self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        # onnxruntime's own base class iterates too (qdq_loss_debug does); from the start each time.
        self.rewind()
        return iter(self.get_next, None)


def sample_frames(
    sources: Sequence[str],
    pre: Preprocess,
    count: int = 32,
    holdout: float = 0.25,
    eval_sources: Sequence[str] = (),
    eval_count: int = 64,
    cache_dir: str | os.PathLike | None = None,
    min_frames: int = MIN_FRAMES,
    on_frame: Callable[[int], None] | None = None,
) -> FrameSet:
    """About `count` frames from `sources`, split into calibration and held-out frames, plus
    up to `eval_count` held-out frames from `eval_sources` (e.g. annotated images).

    The held-out frames are what the report judges, so they come from sources the
    calibration never saw wherever that is possible (an INT8 file can pass on frames like
    its calibration set and miss on another vendor's): with `eval_sources`, those and
    only those are held out; else with several sources, whole sources are held out
    (holdout_sources()); with one source only, a `holdout` share of its frames is.
    """
    if not sources:
        raise InputError("no calibration frames: give at least one --frames source")
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"holdout fraction {holdout} must be in [0, 1)")
    key = cache_key(sources, pre, count, holdout, eval_sources, eval_count)
    cache = Path(cache_dir) / f"frames-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        cached = _load(cache, pre)
        if cached is not None:
            return cached
    images, meta = [], []
    held = set() if eval_sources else set(holdout_sources(list(sources), holdout))
    cal = [s for s in sources if s not in held]
    cal_count = count if eval_sources or not held else max(2, round(count * (1 - holdout)))
    for spec, share in zip(cal, _shares(cal_count, len(cal))):
        # One source only and no --eval: its own frames are split.
        _take(spec, share, pre, images, meta, holdout if not (eval_sources or held) else 0.0, on_frame)
    held_list = [s for s in sources if s in held]
    for spec, share in zip(held_list, _shares(count - cal_count, len(held_list))):
        _take(spec, share, pre, images, meta, 1.0, on_frame)
    for spec, share in zip(eval_sources, _shares(eval_count, len(eval_sources))):
        _take(spec, share, pre, images, meta, 1.0, on_frame)
    n_cal = sum(m["split"] == "calibration" for m in meta)
    if len(meta) < min_frames or n_cal < 2:
        raise InputError(
            f"too few frames: {len(meta)} usable ({n_cal} for calibration) from {len(sources) + len(eval_sources)} "
            f"source(s), need at least {min_frames}; add sources or longer clips"
        )
    if not any(m["split"] == "holdout" for m in meta):
        raise InputError("no held-out frames for the fidelity report: raise --holdout or add --eval sources")
    fs = FrameSet(np.stack(images), meta, pre)
    if cache is not None:
        _save(cache, fs)
    return fs


def holdout_sources(sources: list[str], holdout: float) -> list[str]:
    """Which of several sources are held out whole: round(holdout x n) of them (at least one,
    never all), spread over the list from its second entry, so the first source (often the
    one the user knows best) always calibrates. One source: none (its frames are split)."""
    n = len(sources)
    if n < 2 or holdout <= 0:
        return []
    k = min(n - 1, max(1, round(holdout * n)))
    picks = sorted({int(round(x)) for x in np.linspace(1, n - 1, k)})
    return [sources[i] for i in picks]


def cache_key(sources, pre: Preprocess, count: int, holdout: float, eval_sources, eval_count: int) -> str:
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "sources": [_fingerprint(s) for s in sources],
            "eval": [_fingerprint(s) for s in eval_sources],
            "count": count,
            "eval_count": eval_count if eval_sources else 0,
            "holdout": holdout,
            "pre": pre.to_json(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _fingerprint(spec: str) -> list:
    """A source as path + size + mtime of every file in it: an edited clip is a new key."""
    path = Path(spec)
    if not path.exists():
        return [str(spec)]
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _shares(total: int, n: int) -> list[int]:
    base, extra = divmod(max(total, 0), max(n, 1))
    return [base + (i < extra) for i in range(n)]


def _take(spec, share, pre, images, meta, holdout, on_frame) -> None:
    if share <= 0:
        return
    src = open_source(spec)
    try:
        if src.is_live:
            raise InputError(f"{spec}: a live source cannot be sampled for calibration; record a clip first")
        total = src.frame_count or _count(spec)
        wanted = sorted({int(round(x)) for x in np.linspace(0, max(total - 1, 0), min(share, total))})
        # Image folders name their files; other sources get source#index.
        paths = getattr(src, "paths", None)
        stem = Path(str(spec)).name
        taken = 0
        every = round(1 / holdout) if 0 < holdout < 1 else 0
        for frame in src:
            if not wanted or taken >= len(wanted):
                break
            if frame.index < wanted[taken] or is_blank(frame.image):
                continue  # a blank frame is replaced by the next frame with content
            pos = frame.meta.get("position", frame.index)
            name = paths[pos].name if paths is not None and pos < len(paths) else f"{stem}#{frame.index}"
            held = holdout >= 1.0 or (every and taken % every == every - 1)
            images.append(_resized(frame.image, pre))
            meta.append({
                "source": str(spec), "index": int(frame.index), "name": name,
                "original_hw": list(frame.image.shape[:2]),
                "resized_hw": list(resized_hw(*frame.image.shape[:2], pre)),
                "split": "holdout" if held else "calibration",
            })
            taken += 1
            if on_frame:
                on_frame(1)
    finally:
        src.close()


def _count(spec) -> int:
    with open_source(spec) as src:
        return sum(1 for _ in src)


def _resized(image: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The frame resized as runtime.preprocess resizes it, in an S x S uint8 square."""
    h, w = image.shape[:2]
    rh, rw = resized_hw(h, w, pre)
    interp = interpolation(pre, shrinking=rh * rw < h * w)
    small = image if (rh, rw) == (h, w) else cv2.resize(image, (rw, rh), interpolation=interp)
    out = np.zeros((pre.size, pre.size, 3), np.uint8)
    out[:rh, :rw] = small
    return out


def _save(path: Path, fs: FrameSet) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=fs.images, meta=json.dumps(fs.meta), pre=json.dumps(fs.pre.to_json()))


def _load(path: Path, pre: Preprocess) -> FrameSet | None:
    try:
        with np.load(path) as z:
            if Preprocess.from_json(json.loads(str(z["pre"]))) != pre:
                return None
            return FrameSet(z["images"], json.loads(str(z["meta"])), pre)
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache is rebuilt, not trusted
