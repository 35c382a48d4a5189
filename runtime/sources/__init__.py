"""Frame sources: video files and live streams, DICOM, image folders and numpy arrays.

Every source yields `Frame`s with an HxWx3 uint8 RGB image, so nothing downstream cares
where pictures came from. `open_source(spec)` picks the kind; the classes can also be
built directly from Python (e.g. `ArraySource(frames, fps=30)`).

Imports point one way: base <- images, video, dicom <- open. Video and DICOM load
OpenCV's capture and pydicom only when a source of theirs is opened.
"""

from __future__ import annotations

from .base import Item, Source, frame_problem, to_rgb8, to_uint8
from .images import IMAGE_EXTENSIONS, ArraySource, ImageSource, image_folder
from .open import open_source

__all__ = ["Item", "Source", "ArraySource", "ImageSource", "image_folder", "open_source", "frame_problem",
           "to_rgb8", "to_uint8", "IMAGE_EXTENSIONS", "VideoSource", "DicomSource"]


def __getattr__(name: str):
    if name == "VideoSource":
        from .video import VideoSource

        return VideoSource
    if name == "DicomSource":
        from .dicom import DicomSource

        return DicomSource
    raise AttributeError(name)
