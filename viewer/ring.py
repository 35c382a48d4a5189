"""The last seconds of answered frames, for scrolling back on a frozen picture.

Each entry keeps the frame's pixels (an edit on it may need its own embedding, encoded
from the exact pixels), its masks as the page draws them (RLE: raw masks would cost
0.4 MB per object per frame at 854x480), the embedding they came from, and its JPEG
once made. Bounded by seconds and by bytes, whichever is reached first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from medsam_edge.runtime.frame import Frame

# The pixels kept at most, whatever --buffer-seconds asks: 3 s of 854x480 at 30 fps is 110 MB.
MAX_BYTES = 256 * 2**20


@dataclass
class Entry:
    """One answered frame as the page shows it.

    masks: per object {"id", "colour", "bbox", "rle", "area_px", "score", "lost", ...}
    ids: the object ids the masks belong to (None: the prompts they answer are unknown).
    version: the objects' version the masks answer (None: unknown).
    enc: the embedding the masks came from; own: this frame's own embedding, once known.
    """

    frame: Frame
    masks: list[dict]
    record: dict
    prompts: list = field(default_factory=list)
    ids: tuple[int, ...] | None = None
    version: int | None = None
    enc: object | None = None
    own: object | None = None
    jpeg: bytes | None = None
    seq: int | None = None
    made: str = "live"

    @property
    def index(self) -> int:
        return self.frame.index


class Ring:
    def __init__(self, seconds: float, fps: float | None, max_bytes: int = MAX_BYTES) -> None:
        self.capacity = max(1, round(seconds * (fps or 30.0)))
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, entry: Entry) -> None:
        with self._lock:
            old = self._entries.pop(entry.index, None)
            if old is not None:
                self._bytes -= old.frame.image.nbytes
            self._entries[entry.index] = entry
            self._bytes += entry.frame.image.nbytes
            while len(self._entries) > 1 and (len(self._entries) > self.capacity or self._bytes > self.max_bytes):
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.frame.image.nbytes

    def get(self, index: int) -> Entry | None:
        with self._lock:
            return self._entries.get(index)

    def newest(self) -> Entry | None:
        with self._lock:
            return next(reversed(self._entries.values()), None)

    def step(self, index: int, step: int) -> Entry | None:
        """The entry `step` places after (or before) `index`, clamped to what is kept."""
        with self._lock:
            keys = list(self._entries)
            if not keys:
                return None
            at = keys.index(index) if index in self._entries else len(keys) - 1
            return self._entries[keys[min(max(at + step, 0), len(keys) - 1)]]

    def span(self) -> dict:
        with self._lock:
            keys = list(self._entries)
            return {"first": keys[0] if keys else None, "last": keys[-1] if keys else None, "frames": len(keys),
                    "capacity": self.capacity, "megabytes": round(self._bytes / 2**20, 1)}
