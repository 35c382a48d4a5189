"""open_source: a path, URL, camera index, pipeline or array -> the matching Source."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from medsam_edge.errors import InputError

from .base import Source
from .images import IMAGE_EXTENSIONS, ArraySource, ImageSource, image_folder


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


def open_source(spec: Any, *, loop: bool = False, read_timeout: float | None = None) -> Source:
    """Open `spec` as the matching source.

    spec: a numpy array or a sequence of arrays (or of image paths); a path to a video,
    DICOM file, image or folder of images; a camera index ("0"); a URL (rtsp://, http://);
    a GStreamer pipeline (contains " ! "); or "pydicom:NAME" for pydicom's bundled files.
    loop: start replayable inputs again at their end (ignored for live inputs).
    read_timeout: seconds a video, camera, stream or pipe may take for a frame before the
    run ends with an InputError (default capture.READ_TIMEOUT_S; opening gets at least
    capture.OPEN_TIMEOUT_S).
    Raises InputError naming the input if it cannot be used at all.
    """
    if read_timeout is not None and not (0 < read_timeout <= 3600):  # NaN fails this too
        raise InputError(f"--read-timeout {read_timeout}: expected seconds between 0 and 3600")
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
    from .capture import OPEN_TIMEOUT_S, READ_TIMEOUT_S
    from .video import VideoSource

    read_s = READ_TIMEOUT_S if read_timeout is None else read_timeout
    timeouts = {"open_timeout": max(OPEN_TIMEOUT_S, read_s), "read_timeout": read_s}
    if text.isascii() and text.isdigit():
        return VideoSource(int(text), kind="device", **timeouts)
    if " ! " in text:
        return VideoSource(text, kind="gstreamer", **timeouts)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        return VideoSource(text, kind="url", loop=loop, **timeouts)
    path = Path(text)
    if not path.exists():
        raise InputError(f"{text}: no such file or folder")
    if path.is_dir():
        return image_folder(path, loop=loop)
    if stat.S_ISFIFO(path.stat().st_mode):
        # Opened once, by the capture (a FIFO's data is read once, and a second open waits
        # for a writer that may never come); sniffing its first bytes would eat them.
        if path.suffix.lower() in (".dcm", ".dicom") or loop:
            raise InputError(f"{text}: a named pipe is read once, as a video stream; "
                             + ("--loop needs a file" if loop else "DICOM needs a file: copy it to one"))
        return VideoSource(text, kind="pipe", **timeouts)
    try:
        dicom = _is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom")
    except OSError as exc:
        raise InputError(f"{text}: cannot be read ({exc.strerror})") from None
    if dicom:
        from .dicom import DicomSource

        return DicomSource(path, loop=loop)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource([path], loop=loop)
    return VideoSource(text, kind="file", loop=loop, **timeouts)
