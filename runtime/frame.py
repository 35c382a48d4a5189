"""A frame as it travels from a source through the pipeline, and the blank-frame policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One picture from a source.

    image: HxWx3 uint8 RGB. Sources convert grey, palette, YBR, 16-bit and RGBA input
        to this, so everything downstream sees one format.
    index: position in the source, counting every frame the source produced (a skipped
        bad frame still uses up its index, so gaps are visible).
    timestamp: seconds from the start of the source (from the DICOM frame time or the
        video's frame rate where known, else wall clock for live sources).
    source: a short description of where it came from (a path or URL, never patient data).
    captured_at: time.perf_counter() when the source produced it, for capture-to-mask latency.
    """

    image: np.ndarray
    index: int
    timestamp: float
    source: str
    captured_at: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


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
