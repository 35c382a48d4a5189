"""Frame sources: video files and live streams, DICOM, image folders and numpy arrays.

Every source yields `Frame`s with an HxWx3 uint8 RGB image, so nothing downstream
cares where pictures came from. `open_source(spec)` picks the kind; the classes can
also be built directly from Python (e.g. `ArraySource(frames, fps=30)`).

Bad frames in the middle of an input are skipped, counted in `Source.skipped` and
logged with their index; an input that is unusable from the start raises InputError
when it is opened, not halfway through a run.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medsam_edge.errors import InputError

from .frame import Frame

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A live capture that fails this many reads in a row has ended (cable pulled, stream
# closed); fewer are dropped frames. Opening gives up sooner: nobody waits 30 timeouts.
MAX_LIVE_FAILURES = 30
MAX_LIVE_PROBE_FAILURES = 5
_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt")

# What a source's one-pass reader yields: (position in the input, picture or the reason
# it is unusable, seconds from the start or None for "use the wall clock").
Item = tuple[int, np.ndarray | str, float | None]


def frame_problem(picture: Any) -> str | None:
    """Why `picture` cannot become a frame, or None if it can.

    The one check every source kind runs on what it read, before conversion: a 2-D grey
    picture or HxWxC with C in 1, 3, 4, non-empty, of a bool, integer or float dtype.
    """
    if not isinstance(picture, np.ndarray):
        return f"not an array ({type(picture).__name__})"
    if picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] not in (1, 3, 4)):
        return f"shape {picture.shape} is not HxW, HxWx1, HxWx3 or HxWx4"
    if picture.size == 0:
        return f"zero-size picture, shape {picture.shape}"
    if picture.dtype.kind not in "biuf":
        return f"unsupported dtype {picture.dtype}"
    return None


def to_uint8(picture: np.ndarray) -> np.ndarray:
    """uint8 as is; bool to 0/255; anything else stretched min-max over the whole picture.

    Min-max is taken over all channels together so colour pictures keep their hue. A
    constant picture becomes black (there is no contrast to stretch).
    """
    if picture.dtype == np.uint8:
        return picture
    if picture.dtype == np.bool_:
        return picture.astype(np.uint8) * 255
    values = picture.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)  # NaN/inf would poison min and max
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(picture.shape, np.uint8)
    return ((values - low) * (255.0 / (high - low)) + 0.5).astype(np.uint8)


def to_rgb8(picture: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """A picture that passed `frame_problem` -> HxWx3 uint8 RGB (alpha dropped)."""
    if picture.ndim == 3 and picture.shape[2] == 1:
        picture = picture[..., 0]
    picture = np.ascontiguousarray(to_uint8(picture[..., :3] if picture.ndim == 3 else picture))
    if picture.ndim == 2:
        return cv2.cvtColor(picture, cv2.COLOR_GRAY2RGB)
    if bgr:
        return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
    return picture


def is_blank(image: np.ndarray, *, level: int = 8, fraction: float = 0.98) -> bool:
    """True if at least `fraction` of the pixels are darker than `level` in every channel.

    Blank frames are valid (an ultrasound probe lifted off the skin gives one), so sources
    never drop them; the pipeline may. The fraction leaves room for the text and rulers
    an ultrasound machine draws on an otherwise black screen.
    """
    if image.size == 0:
        return True
    sample = image[::4, ::4]  # a blank test doesn't need every pixel
    dark = (sample <= level).all(axis=-1) if sample.ndim == 3 else sample <= level
    return bool(dark.mean() >= fraction)


class Source:
    """Base of all sources: iterate for Frames; `close()` or use as a context manager.

    is_live: frames arrive in real time (camera, stream); the pipeline should not queue.
    fps: frames per second if the input says, else None.
    frame_count: frames in one pass if known, else None.
    time_source: where timestamps come from ("FrameTime", "fps", "pos_msec", "wall_clock",
        "index", ...); "index" means the rate is unknown and timestamp = position.
    skipped: bad frames skipped so far (each also logged with its index).
    loop: replayable inputs start again at the end; index and timestamp keep growing.
    Each iteration of a replayable source starts at its beginning; a live one goes on.
    """

    is_live: bool = False
    fps: float | None = None
    frame_count: int | None = None
    time_source: str = "index"

    def __init__(self, description: str, *, loop: bool = False) -> None:
        self.description = description
        self.loop = loop
        self.skipped = 0
        self.closed = False
        self._probed: tuple[list[Item], Iterator[Item]] | None = None

    def _read_pass(self) -> Iterator[Item]:
        """One pass over the input from its start. Subclasses implement this."""
        raise NotImplementedError

    def _convert(self, picture: np.ndarray) -> np.ndarray:
        return to_rgb8(picture)

    def _release(self) -> None:
        """Free captures and datasets. Subclasses that hold any implement this."""

    def _set_rate(self, fps: float | None) -> None:
        self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else None
        self.time_source = "fps" if self.fps else "index"

    def _stamp(self, position: int) -> float:
        return position / self.fps if self.fps else float(position)

    def _probe(self) -> None:
        """Read up to the first good frame so a useless input fails at open, naming why."""
        items = self._read_pass()
        seen: list[Item] = []
        for item in items:
            seen.append(item)
            if not isinstance(item[1], str) and frame_problem(item[1]) is None:
                self._probed = (seen, items)
                return
            if self.is_live and len(seen) >= MAX_LIVE_PROBE_FAILURES:
                break
        problems = [p if isinstance(p, str) else frame_problem(p) for _, p, _ in seen]
        detail = f"{len(seen)} unreadable, first: {problems[0]}" if problems else "it is empty"
        self.close()
        raise InputError(f"{self.description}: no readable frames ({detail})")

    def __iter__(self) -> Iterator[Frame]:
        if self.closed:
            raise ValueError(f"{self.description}: iterating a closed source")
        index, offset, passes = 0, 0.0, 0
        started = time.perf_counter()
        while True:
            if self._probed is not None:
                seen, rest = self._probed
                self._probed = None
                # A live source's probe frame is stale by now: check only, never replay.
                items: Iterator[Item] = rest if self.is_live else itertools.chain(seen, rest)
            else:
                items = self._read_pass()
            good, last = 0, 0.0
            for position, picture, stamp in items:
                if self.closed:
                    return
                problem = picture if isinstance(picture, str) else frame_problem(picture)
                if problem is None:
                    try:
                        image = self._convert(picture)
                    except (ValueError, cv2.error) as exc:
                        problem = f"cannot convert to RGB: {exc}"
                if problem is not None:
                    self.skipped += 1
                    log.warning("%s: frame %d skipped: %s", self.description, index, problem)
                    index += 1
                    continue
                now = time.perf_counter()
                last = now - started if stamp is None else stamp
                yield Frame(image=image, index=index, timestamp=offset + last,
                            source=self.description, captured_at=now,
                            meta={"position": position, "loop": passes})
                index += 1
                good += 1
            if not self.loop or self.is_live:
                return
            if good == 0:
                log.warning("%s: a looped pass gave no frames; stopping", self.description)
                return
            offset += last + (1.0 / self.fps if self.fps else 1.0)
            passes += 1

    def close(self) -> None:
        """Release what the source holds; stops a running iteration. Safe to call twice."""
        self.closed = True
        self._release()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


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
        self._probe()

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
        self._probe()

    def _read_pass(self) -> Iterator[Item]:
        for position, path in enumerate(self.paths):
            stamp = self._stamp(position)
            try:
                # imdecode(fromfile) instead of imread: works for any path encoding, and
                # distinguishes a missing file from an undecodable one.
                picture = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
            except (OSError, cv2.error) as exc:
                yield position, f"{path.name}: cannot be read ({exc})", stamp
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


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _pydicom_test_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    if not name or re.search(r"[\\/*?\[\]]", name):
        raise InputError(f"pydicom:{name}: give a bare file name, e.g. pydicom:examples_ybr_color.dcm")
    # download=False: a runtime never fetches data behind the user's back.
    path = get_testdata_file(name, download=False)
    if path is None:
        raise InputError(f"pydicom:{name}: not among pydicom's bundled test files; "
                         "try pydicom:examples_ybr_color.dcm (an ultrasound cine)")
    return str(path)


def open_source(spec: Any, *, loop: bool = False) -> Source:
    """Open `spec` as the matching source.

    spec: a numpy array or a sequence of arrays (or of image paths); a path to a video,
    DICOM file, image or folder of images; a camera index ("0"); a URL (rtsp://, http://);
    a GStreamer pipeline (contains " ! "); or "pydicom:NAME" for pydicom's bundled files.
    loop: start replayable inputs again at their end (ignored for live inputs).
    Raises InputError naming the input if it cannot be used at all.
    """
    if isinstance(spec, np.ndarray):
        return ArraySource(spec, loop=loop)
    if isinstance(spec, (list, tuple)):
        if spec and all(isinstance(s, (str, os.PathLike)) for s in spec):
            return ImageSource(spec, loop=loop)
        return ArraySource(spec, loop=loop)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise InputError(f"cannot open a source from a {type(spec).__name__}: give a path, "
                         "URL, camera index, GStreamer pipeline or numpy array")
    text = spec.strip()
    if not text:
        raise InputError("empty source: give a path, URL, camera index or pipeline")
    if text.startswith("pydicom:"):
        from .dicom import DicomSource

        return DicomSource(_pydicom_test_file(text[len("pydicom:"):]), loop=loop)
    from .video import VideoSource

    if text.isascii() and text.isdigit():
        return VideoSource(int(text), kind="device")
    if " ! " in text:
        return VideoSource(text, kind="gstreamer")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        return VideoSource(text, kind="url", loop=loop)
    path = Path(text)
    if not path.exists():
        raise InputError(f"{text}: no such file or folder")
    if path.is_dir():
        return image_folder(path, loop=loop)
    try:
        dicom = _is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom")
    except OSError as exc:
        raise InputError(f"{text}: cannot be read ({exc.strerror})") from None
    if dicom:
        from .dicom import DicomSource

        return DicomSource(path, loop=loop)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource([path], loop=loop)
    return VideoSource(text, kind="file", loop=loop)
