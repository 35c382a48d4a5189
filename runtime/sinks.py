"""Sinks: where FrameResults go (overlay video, mask files, a JSONL log).

Every sink is a context manager with `write(result)` and `close()`. Everything a sink
writes goes under a hidden `.partial` name beside its destination (mask PNGs into a
`.masks.partial/` folder) and is renamed in close(), which also runs after an exception
in the pipeline: frames written so far are valid and kept. A process killed mid-run
leaves only `.partial` names, never a file under its final name.

A write that fails (a full disk) raises OSError at that frame; close() still renames
what is valid: the JSONL is cut back to its last whole record, PNGs and the NPZ are
written whole or not at all. The overlay video is the exception that is checked:
OpenCV's writer may drop frames without raising, so close() reads the file back and
keeps it under its `.partial` name, saying so, unless it holds every frame written.
Sinks do not time themselves: the caller measures the write stage.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from medsam_edge import atomic
from medsam_edge.errors import InputError

from .result import FrameResult

# BGR, one per box index (cycled), chosen to stand out on grey ultrasound and on red tissue.
PALETTE_BGR = ((0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 128, 0),
               (0, 128, 255), (255, 255, 0), (128, 0, 255), (0, 0, 255))
FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
# OpenCV 4.11's FFmpeg writer refuses 1 px pictures and corrupts the heap (the process
# aborts) on 2-3 px wide ones; from 4 px on it wrote every size tried up to 33 px: 16 is the margin.
MIN_VIDEO_SIDE = 16
DEFAULT_FPS = 30.0  # for sources that do not know their rate (image folders, arrays)
# Less free space than this is a full disk: OpenCV's video writer does not say when its
# writes fail, so the overlay sink checks before each frame, and --out before the run.
MIN_FREE_BYTES = 1 << 20


def free_bytes(directory: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on `directory`'s filesystem; None for a
    filesystem that reports no size at all (/proc, some FUSE mounts): writes tell there."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize if st.f_blocks else None


def check_free_space(directory: str | os.PathLike, what: str) -> None:
    """OSError(ENOSPC) when `directory` has less than MIN_FREE_BYTES left."""
    free = free_bytes(directory)
    if free is not None and free < MIN_FREE_BYTES:
        raise OSError(errno.ENOSPC, f"no space left for {what} ({free // 1024} KiB free)")


def partial_path(path: Path, keep_suffix: bool = False) -> Path:
    """The hidden name `path` is written under until close(); `keep_suffix` keeps the
    extension last (`.overlay.partial.mp4`) for writers that pick a format from it."""
    return path.with_name(f".{path.stem}.partial{path.suffix}" if keep_suffix else f".{path.name}.partial")


class Sink:
    """Base class: subclasses implement _write and _finish; close() is idempotent."""

    def __init__(self) -> None:
        self._outputs: list[Path] = []
        self._closed = False

    @property
    def outputs(self) -> list[Path]:
        """Final paths this sink has produced (streaming files appear after close())."""
        return list(self._outputs)

    def write(self, result: FrameResult) -> None:
        """Add one frame's results."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        self._write(result)

    def close(self) -> None:
        """Finish and rename the files into place; safe to call twice or after an error."""
        if not self._closed:
            self._closed = True
            self._finish()

    def _write(self, result: FrameResult) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def draw_overlay(result: FrameResult) -> np.ndarray:
    """The frame as BGR with each mask's contour, its box and a status line."""
    img = cv2.cvtColor(np.ascontiguousarray(result.frame.image), cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    thick = max(2, round(min(h, w) / 300))  # 1-px lines vanish in 4:2:0 chroma
    for i, mask in enumerate(result.masks):
        colour = PALETTE_BGR[i % len(PALETTE_BGR)]
        contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, colour, thick, cv2.LINE_AA)
    for i, prompt in enumerate(result.prompts):
        colour = PALETTE_BGR[i % len(PALETTE_BGR)]
        if prompt.box is not None and np.all(np.isfinite(prompt.box)):
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            cv2.rectangle(img, (x0, y0), (x1, y1), colour, 1)
        for (x, y), label in zip(prompt.points, prompt.labels):
            # A positive click is a filled dot, a negative one a ring.
            cv2.circle(img, (int(round(x)), int(round(y))), thick + 2, colour, -1 if label else thick, cv2.LINE_AA)
    age = "fresh" if result.fresh else f"reused age {result.staleness}"
    lost = list(result.lost) + [False] * len(result.scores)  # lost may be empty for user boxes
    scores = " ".join(f"{float(s):.2f}" + ("(lost)" if x else "") for s, x in zip(result.scores, lost))
    text = f"#{result.frame.index} {age} score {scores}".rstrip()
    scale = max(0.35, h / 1000)
    org = (4, 4 + int(22 * scale))
    # Dark outline under light text so it reads on any background.
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


class OverlayVideoSink(Sink):
    """An overlay video (.mp4 with mp4v, .avi with MJPG) at `fps`.

    The size is fixed by the first frame. A stream may change resolution mid-run (a
    probe's depth setting, a capture card renegotiating), and VideoWriter silently drops
    frames of another size, so later frames are drawn at their own size and then resized.
    A run with no frames produces no video (there is no size to open it with).
    """

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        super().__init__()
        self.path = Path(path)
        codec = FOURCC.get(self.path.suffix.lower())
        if codec is None:
            raise InputError(f"{self.path}: unsupported video extension; use one of {', '.join(FOURCC)}")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise InputError(f"{self.path}: frame rate must be a positive number, got {fps!r}")
        self.codec, self.fps = codec, float(fps)
        self.partial = partial_path(self.path, keep_suffix=True)
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height)
        self.frames = 0  # frames handed to the writer without an error

    def _write(self, result: FrameResult) -> None:
        img = draw_overlay(result)
        if self._writer is None:
            if min(img.shape[:2]) < MIN_VIDEO_SIDE:
                raise InputError(f"{self.path}: the overlay video needs pictures of at least {MIN_VIDEO_SIDE} px a "
                                 f"side, these are {img.shape[1]}x{img.shape[0]}; run with --no-video")
            self._size = (img.shape[1], img.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*self.codec)
            writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, self._size)
            if not writer.isOpened():
                self.partial.unlink(missing_ok=True)
                raise InputError(
                    f"{self.path}: cannot open a video writer with codec {self.codec} "
                    f"(does the folder exist and does this OpenCV build have the codec?)")
            self._writer = writer
        if (img.shape[1], img.shape[0]) != self._size:
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        check_free_space(self.partial.parent, f"{self.path.name} frame {result.frame.index}")
        # OpenCV 5 returns False for a frame it could not write, OpenCV 4 returns None.
        if self._writer.write(img) is False:
            raise OSError(errno.EIO, f"the video writer could not write frame {result.frame.index} "
                                     f"to {self.partial}")
        self.frames += 1

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.release()
        readable = video_frames(self.partial)
        if readable != self.frames:
            raise InputError(
                f"{self.path}: the video written holds {readable} of its {self.frames} frames (was the disk "
                f"full?); left as {self.partial.name}, not renamed; frames.jsonl has every frame")
        os.replace(self.partial, self.path)
        self._outputs.append(self.path)


def video_frames(path: Path) -> int:
    """Frames a written video holds by its container, 0 if it does not open or its last
    frame does not decode (a writer that ran out of disk leaves no index or no data)."""
    cap = cv2.VideoCapture(str(path))
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        if count <= 0:
            return 0
        cap.set(cv2.CAP_PROP_POS_FRAMES, count - 1)
        ok, _ = cap.read()
        return count if ok else 0
    finally:
        cap.release()


class MaskPngSink(Sink):
    """One 0/255 PNG per frame and box, `{index:06d}_{box}.png`, in a `.partial` folder
    beside `directory` that close() renames to it (each PNG written atomically inside).

    `directory` must not hold files already: a run's masks are one folder, not a mix.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        super().__init__()
        self.directory = Path(directory)
        if self.directory.is_dir() and any(self.directory.iterdir()):
            raise InputError(f"{self.directory}: already holds files; give an empty or new folder for the masks")
        self.partial = partial_path(self.directory)
        shutil.rmtree(self.partial, ignore_errors=True)  # a killed run's leftovers
        self.partial.mkdir(parents=True)
        self._names: list[str] = []

    def _write(self, result: FrameResult) -> None:
        for b, mask in enumerate(result.masks):
            ok, png = cv2.imencode(".png", np.asarray(mask, bool).astype(np.uint8) * 255)
            if not ok:
                raise RuntimeError(f"PNG encoding failed for frame {result.frame.index} box {b}")
            name = f"{result.frame.index:06d}_{b}.png"
            atomic.write_bytes(self.partial / name, png.tobytes())
            self._names.append(name)

    def _finish(self) -> None:
        if self.directory.is_dir():
            self.directory.rmdir()  # empty (checked when opened); rename cannot replace it otherwise
        os.replace(self.partial, self.directory)
        self._outputs.extend(self.directory / name for name in self._names)


class MaskNpzSink(Sink):
    """All masks in one compressed NPZ, written atomically at close.

    Arrays (T frames, N = the most boxes any frame had; frames with fewer are padded):
      index (T,) int64; count (T,) int32 boxes per frame; boxes (T, N, 4) float32 and
      scores (T, N) float32, NaN where padded; masks_shape = (T, N, H, W);
      masks (T, N, H, ceil(W/8)) uint8, np.packbits along the last axis. Unpack with
          d = np.load(path)
          masks = np.unpackbits(d["masks"], axis=-1, count=int(d["masks_shape"][-1])).astype(bool)
      and frame t's masks are masks[t, :d["count"][t]].
    Masks are packed as they arrive (8x smaller). One array needs one frame size, so a
    frame of another size raises InputError (frames so far are still saved by close());
    use the PNG sink for streams that change resolution.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self._index: list[int] = []
        self._packed: list[np.ndarray] = []
        self._boxes: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._hw: tuple[int, int] | None = None

    def _write(self, result: FrameResult) -> None:
        masks = np.asarray(result.masks, bool)
        # An empty (0, ...) mask stack may not carry H, W; the frame's size is the masks' size.
        hw = masks.shape[1:] if masks.ndim == 3 and len(masks) else (result.frame.height, result.frame.width)
        if self._hw is None:
            self._hw = hw
        elif hw != self._hw:
            raise InputError(
                f"{self.path}: frame {result.frame.index} is {hw[1]}x{hw[0]} but earlier frames are "
                f"{self._hw[1]}x{self._hw[0]}; one NPZ holds one size, use PNG masks for this stream")
        self._index.append(int(result.frame.index))
        self._packed.append(np.packbits(masks.reshape(-1, *hw), axis=-1))
        self._boxes.append(np.asarray(result.boxes, np.float32).reshape(-1, 4))
        self._scores.append(np.asarray(result.scores, np.float32).reshape(-1))

    def _finish(self) -> None:
        t = len(self._index)
        n = max((len(p) for p in self._packed), default=0)
        h, w = self._hw or (0, 0)
        masks = np.zeros((t, n, h, (w + 7) // 8), np.uint8)
        boxes = np.full((t, n, 4), np.nan, np.float32)
        scores = np.full((t, n), np.nan, np.float32)
        for i, (p, b, s) in enumerate(zip(self._packed, self._boxes, self._scores)):
            masks[i, : len(p)], boxes[i, : len(b)], scores[i, : len(s)] = p, b, s
        count = np.asarray([len(p) for p in self._packed], np.int32)
        # A file object, because savez given a name not ending in .npz appends one.
        with atomic.atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, index=np.asarray(self._index, np.int64), count=count, masks=masks,
                                masks_shape=np.asarray((t, n, h, w), np.int64), boxes=boxes, scores=scores)
        self._outputs.append(self.path)


class JsonlSink(Sink):
    """One `json_text(result.record())` line per frame (finite numbers only), flushed so a reader can tail it.

    A line that fails to reach the disk raises; close() cuts the file back to the last
    whole line before renaming it, so every line of frames.jsonl is a whole record.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self._file = open(self.partial, "wb")
        self._whole = 0  # bytes of whole lines on disk
        self._failed = False

    def _write(self, result: FrameResult) -> None:
        line = (atomic.json_text(result.record()) + "\n").encode("utf-8")
        if self._failed:
            raise OSError(errno.EIO, f"{self.path}: an earlier line could not be written")
        try:
            self._file.write(line)
            self._file.flush()
        except OSError:
            self._failed = True
            raise
        self._whole += len(line)

    def _finish(self) -> None:
        try:
            self._file.close()
        except OSError:
            self._failed = True  # the buffer's rest did not fit either
        if self._failed:
            os.truncate(self.partial, self._whole)
        os.replace(self.partial, self.path)
        self._outputs.append(self.path)


class MultiSink(Sink):
    """Fans each result out to several sinks; close() closes them all even if one fails."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        super().__init__()
        self.sinks = list(sinks)

    @property
    def outputs(self) -> list[Path]:
        return [p for s in self.sinks for p in s.outputs]

    def _write(self, result: FrameResult) -> None:
        for s in self.sinks:
            s.write(result)

    def _finish(self) -> None:
        first: BaseException | None = None
        for s in self.sinks:
            try:
                s.close()
            except BaseException as e:  # keep closing: every other file still deserves its rename
                first = first or e
        if first is not None:
            raise first


def open_sinks(out_dir: str | os.PathLike, *, video: bool, masks: str | None, jsonl: bool,
               fps: float | None) -> MultiSink:
    """Create `out_dir` and the chosen sinks: overlay.mp4, masks/ or masks.npz, frames.jsonl.

    `fps=None` (a source that does not know its rate) writes the video at DEFAULT_FPS.
    """
    if masks not in (None, "png", "npz"):
        raise InputError(f"masks must be 'png', 'npz' or none, got {masks!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Built in this order so nothing that can fail (option checks, opening the JSONL)
    # comes after a sink that would commit a file: a failure here leaves no finished file.
    sinks: list[Sink] = []
    if video:
        sinks.append(OverlayVideoSink(out / "overlay.mp4", DEFAULT_FPS if fps is None else fps))
    if masks == "png":
        sinks.append(MaskPngSink(out / "masks"))
    elif masks == "npz":
        sinks.append(MaskNpzSink(out / "masks.npz"))
    if jsonl:
        sinks.append(JsonlSink(out / "frames.jsonl"))
    return MultiSink(sinks)
