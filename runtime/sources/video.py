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
        self._probe()

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
        cap, position, failures, first_msec = self._cap, 0, 0, None
        while cap.isOpened():
            ok, picture = cap.read()
            if not ok:
                if not self.is_live:
                    break  # a file's read fails at its end
                failures += 1
                if failures >= MAX_LIVE_FAILURES:
                    log.warning("%s: %d reads failed in a row; treating the stream as ended",
                                self.description, failures)
                    break
                yield position, "capture returned no frame", None
                position += 1
                continue
            failures = 0
            stamp: float | None = None
            if not self.is_live:
                msec = cap.get(cv2.CAP_PROP_POS_MSEC)
                first_msec = msec if first_msec is None else first_msec
                if position > 0 and math.isfinite(msec) and msec > first_msec:
                    stamp, self.time_source = (msec - first_msec) / 1000.0, "pos_msec"
                else:
                    stamp = self._stamp(position)
            yield position, picture, stamp
            position += 1
        if self._cap is cap and not self.is_live:
            self._release()

    def _convert(self, picture: np.ndarray) -> np.ndarray:
        return to_rgb8(picture, bgr=True)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
