"""OpenCV capture sources: video files, cameras, stream URLs and GStreamer pipelines."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator

import cv2
import numpy as np

from medsam_edge.errors import InputError

from .base import LIVE_SCHEMES, MAX_LIVE_FAILURES, Item, Source, to_rgb8

log = logging.getLogger(__name__)

# Failed reads in a row that end a file before its declared frame count: a damaged stretch
# (FFmpeg reads on after it) is shorter; a file cut short fails every read from there on.
MAX_FILE_FAILURES = 30


class VideoSource(Source):
    """OpenCV capture: a video file, a camera index, a stream URL or a GStreamer pipeline.

    Files: timestamps from the container (CAP_PROP_POS_MSEC, relative to the first
    frame), else position / fps. Live inputs: wall-clock seconds since iteration began.
    """

    def __init__(self, target: str | int, *, kind: str, loop: bool = False) -> None:
        # Frames, logs and errors carry the description: never a URL's password.
        super().__init__(re.sub(r"://[^/@]*@", "://***@", str(target)), loop=loop)
        self._target, self._kind = target, kind
        self._cap: cv2.VideoCapture | None = self._open()
        self._fresh = True  # the capture above has not been read from yet
        if kind == "file":
            self.is_live = False
        elif kind == "url" and str(target).split("://")[0].lower() not in LIVE_SCHEMES:
            # http(s) may be a plain file on a server (has a frame count) or a live stream.
            self.is_live = self._cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 0
        else:
            self.is_live = True
        self._set_rate(self._cap.get(cv2.CAP_PROP_FPS))
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if not self.is_live and count > 0 else None
        self.time_source = "wall_clock" if self.is_live else self.time_source
        self._check_first_frame()

    def _open(self) -> cv2.VideoCapture:
        if self._kind == "gstreamer":
            cap = cv2.VideoCapture(str(self._target), cv2.CAP_GSTREAMER)
        elif self._kind == "url":
            # Bounded waits so a dead camera fails at open instead of hanging forever.
            cap = cv2.VideoCapture(str(self._target), cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000,
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
        else:
            cap = cv2.VideoCapture(self._target)
        if cap.isOpened():
            if self._kind == "device":
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a backlog
            return cap
        cap.release()
        raise InputError(f"{self.description}: {self._open_failure()}")

    def _open_failure(self) -> str:
        if self._kind == "gstreamer":
            if not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()):
                return ("this OpenCV build has no GStreamer support (PyPI's opencv-python "
                        "wheels lack it): use an OpenCV built with GStreamer, or a device/URL")
            return "GStreamer pipeline did not start: test it with gst-launch-1.0"
        if self._kind == "device":
            return "camera cannot be opened: check it is connected and not in use"
        if self._kind == "url":
            return "stream cannot be opened: check the URL, network and credentials"
        return "OpenCV cannot open it as a video: is it a video file (mp4, avi, mkv, mov)?"

    def _read_pass(self) -> Iterator[Item]:
        # Files restart from a new capture (seeking back is unreliable in some formats);
        # a live capture just goes on.
        if self._cap is None or not (self._fresh or self.is_live):
            self._release()
            self._cap = self._open()
        self._fresh = False
        self.truncated = None
        if self.is_live:
            yield from self._read_live(self._cap)
        else:
            yield from self._read_file(self._cap)
            if self._cap is not None:
                self._release()

    def _read_live(self, cap: cv2.VideoCapture) -> Iterator[Item]:
        position, failures = 0, 0
        while cap.isOpened():
            ok, picture = cap.read()
            if not ok:
                failures += 1
                if failures >= MAX_LIVE_FAILURES:
                    log.warning("%s: %d reads failed in a row; treating the stream as ended",
                                self.description, failures)
                    break
                yield position, "capture returned no frame", None
                position += 1
                continue
            failures = 0
            yield position, picture, None
            position += 1

    def _read_file(self, cap: cv2.VideoCapture) -> Iterator[Item]:
        """A file's frames. A read fails at the end, but also at a damaged packet in the
        middle, after which FFmpeg reads on: so within the container's declared frame
        count a failed read is held, and becomes a skipped (counted) frame when a good one
        follows; MAX_FILE_FAILURES in a row, or the declared count reached, end the file.
        A file that ends before its declared count says so (`truncated`)."""
        declared = self.frame_count
        position, held, first_msec = 0, 0, None
        while True:
            ok, picture = cap.read()
            if not ok:
                if declared is None or position + held >= declared:
                    break  # the end, where the container says it is (or knows nothing)
                held += 1
                if held >= MAX_FILE_FAILURES:
                    break
                continue
            for _ in range(held):  # damaged frames between good ones: skipped and counted
                yield position, "the video's data for this frame is damaged or missing", self._stamp(position)
                position += 1
            held = 0
            msec = cap.get(cv2.CAP_PROP_POS_MSEC)
            first_msec = msec if first_msec is None else first_msec
            if position > 0 and math.isfinite(msec) and msec > first_msec:
                stamp, self.time_source = (msec - first_msec) / 1000.0, "pos_msec"
            else:
                stamp = self._stamp(position)
            yield position, picture, stamp
            position += 1
        # Counts estimated from a container's duration can be one frame over: not a truncation.
        if declared is not None and declared - position > 1:
            self.truncated = (f"the file ended after {position} of the {declared} frames its container "
                              "declares (cut short or damaged)")
            log.warning("%s: %s", self.description, self.truncated)

    def _convert(self, picture: np.ndarray) -> np.ndarray:
        return to_rgb8(picture, bgr=True)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
