"""What every source shares: the Source base (one-pass readers, probing, looping, skipped
frames) and the conversion of whatever was read to an HxWx3 uint8 RGB picture.

Bad frames in the middle of an input are skipped, counted in `Source.skipped` and
logged with their index; an input that is unusable from the start raises InputError
when it is opened, not halfway through a run.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from medsam_edge.errors import InputError
from medsam_edge.runtime.frame import Frame

log = logging.getLogger(__name__)

# A live capture that fails this many reads in a row has ended (cable pulled, stream
# closed); fewer are dropped frames. Opening gives up sooner: nobody waits 30 timeouts.
MAX_LIVE_FAILURES = 30
MAX_LIVE_OPEN_FAILURES = 5
# Skipped frames logged one by one; after these, they are only counted (summary.json has
# the count), so a badly damaged input cannot flood the log.
MAX_LOGGED_SKIPS = 10
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt")

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


class Source:
    """Base of all sources: iterate for Frames; `close()` or use as a context manager.

    is_live: frames arrive in real time (camera, stream); the pipeline should not queue.
    fps: frames per second if the input says, else None.
    frame_count: frames in one pass if known, else None.
    time_source: where timestamps come from ("FrameTime", "fps", "pos_msec", "wall_clock",
        "index", ...); "index" means the rate is unknown and timestamp = position.
    skipped: bad frames skipped so far (the first MAX_LOGGED_SKIPS also logged with their index).
    truncated: None, or why the input ended before the frame count its header declares
        (set by the pass that found it; the run's summary reports it).
    loop: replayable inputs start again at the end; index and timestamp keep growing.
    Each iteration of a replayable source starts at its beginning; a live one goes on.
    """

    is_live: bool = False
    fps: float | None = None
    frame_count: int | None = None
    time_source: str = "index"
    truncated: str | None = None

    def __init__(self, description: str, *, loop: bool = False) -> None:
        self.description = description
        self.loop = loop
        self.skipped = 0
        self.closed = False
        self._first_read: tuple[list[Item], Iterator[Item]] | None = None

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

    def _check_first_frame(self) -> None:
        """Read up to the first good frame so a useless input fails at open, naming why."""
        items = self._read_pass()
        seen: list[Item] = []
        for item in items:
            seen.append(item)
            if not isinstance(item[1], str) and frame_problem(item[1]) is None:
                self._first_read = (seen, items)
                return
            if self.is_live and len(seen) >= MAX_LIVE_OPEN_FAILURES:
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
            if self._first_read is not None:
                seen, rest = self._first_read
                self._first_read = None
                # A live source's first frame is stale by now: check only, never replay.
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
                    if self.skipped <= MAX_LOGGED_SKIPS:
                        log.warning("%s: frame %d skipped: %s%s", self.description, index, problem,
                                    "; further skipped frames are only counted"
                                    if self.skipped == MAX_LOGGED_SKIPS else "")
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
