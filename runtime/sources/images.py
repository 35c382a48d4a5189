"""Pictures already in memory or on disk: numpy arrays and image files or folders."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from medsam_edge.errors import InputError

from .base import Item, Source, to_rgb8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ArraySource(Source):
    """numpy input: one HxW / HxWx3 / HxWx4 picture, a (T,H,W[,C]) stack or a sequence.

    A 3-D array whose last axis is 3 or 4 is one colour picture, not a 3- or 4-frame
    stack. Timestamps are position / fps, or the position when fps is not given.
    """

    def __init__(self, frames: np.ndarray | Sequence[np.ndarray], *, fps: float | None = None,
                 loop: bool = False, description: str = "numpy array") -> None:
        super().__init__(description, loop=loop)
        if isinstance(frames, np.ndarray):
            if frames.size == 0:
                raise InputError(f"{description}: zero-size array, shape {frames.shape}: "
                                 "give at least one HxW or HxWx3 picture")
            single = frames.ndim == 2 or (frames.ndim == 3 and frames.shape[2] in (3, 4))
            frames = [frames] if single else list(frames)
        self._frames = list(frames)
        self.frame_count = len(self._frames)
        self._set_rate(fps)
        self._check_first_frame()

    def _read_pass(self) -> Iterator[Item]:
        for position, picture in enumerate(self._frames):
            yield position, picture, self._stamp(position)


class ImageSource(Source):
    """Image files in the given order (one file is a one-frame source), via OpenCV.

    Files are read unchanged (16-bit stays 16-bit, alpha stays) and then normalised:
    grey -> RGB, alpha dropped, non-8-bit stretched min-max over the picture.
    `paths` is public: calibration names its frames after the files.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, fps: float | None = None,
                 loop: bool = False, description: str | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        super().__init__(description or (str(self.paths[0]) if self.paths else "images"),
                         loop=loop)
        self.frame_count = len(self.paths)
        self._set_rate(fps)
        self._check_first_frame()

    def _read_pass(self) -> Iterator[Item]:
        for position, path in enumerate(self.paths):
            stamp = self._stamp(position)
            try:
                # imdecode(fromfile) instead of imread: works for any path encoding, and
                # distinguishes a missing file from an undecodable one.
                data = np.fromfile(path, np.uint8)
                if data.size == 0:
                    yield position, f"{path.name}: empty file (0 bytes)", stamp
                    continue
                picture = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            except OSError as exc:
                yield position, f"{path.name}: cannot be read ({exc.strerror or exc})", stamp
                continue
            except cv2.error:  # OpenCV's text is an assertion over several lines
                yield position, f"{path.name}: not a decodable image", stamp
                continue
            if picture is None:
                yield position, f"{path.name}: not a decodable image", stamp
            else:
                yield position, picture, stamp

    def _convert(self, picture: np.ndarray) -> np.ndarray:
        return to_rgb8(picture, bgr=True)


def image_folder(folder: str | os.PathLike[str], *, loop: bool = False) -> ImageSource:
    """A folder's images (by extension), in natural name order (frame2 before frame10)."""
    root = Path(folder)
    paths = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not paths:
        raise InputError(f"{root}: folder holds no images "
                         f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    paths.sort(key=lambda p: [int(t) if t.isdigit() else t.lower()
                              for t in re.split(r"(\d+)", p.name)])
    return ImageSource(paths, loop=loop, description=str(root))
