"""Answers -> what the page draws: ring entries (masks as RLE, tagged with their object
ids) and frame packets (JPEG + the masks of that very frame, one binary message)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from medsam_edge.runtime.result import FrameResult
from medsam_edge.viewer.hud import how_made
from medsam_edge.viewer.objects import Version
from medsam_edge.viewer.protocol import colour, pack, rle
from medsam_edge.viewer.ring import Entry

HISTORY = 32  # object versions handed to the session that a late answer may still be for


def same_prompt(a, b) -> bool:
    if (a.box is None) != (b.box is None) or len(a.points) != len(b.points):
        return False
    if a.box is not None and not np.allclose(a.box, b.box, atol=1e-3):
        return False
    return bool(np.allclose(a.points, b.points, atol=1e-3) and np.array_equal(a.labels, b.labels))


class Versions:
    """The object versions handed to the real-time session, to tell which one an answer used.

    The session takes new prompts at the next frame it starts, so answers of frames begun
    before an edit still carry the old prompts: their masks belong to the old ids.
    Untracked, an answer's prompts are exactly its version's. Tracked, they move; but the
    first answer after a version is handed carries its prompts exactly (the tracker starts
    from them), and answers come in order: from that answer on, answers belong to it.
    Until then they belong to the version before; after a clear, to none (a tracker may go
    on with the old prompts a while).
    """

    def __init__(self, track: bool) -> None:
        self.track = track
        self._handed: deque[Version] = deque(maxlen=HISTORY)
        self._current: Version | None = None  # tracked: the version the answers have reached
        self._tags: dict[int, Version] = {}  # the session's prompts version -> the objects' version

    def handed(self, version: Version, tag: int | None = None) -> None:
        """tag: the prompts version the session's answers to it carry (set_prompts' return)."""
        self._handed.append(version)
        if tag is not None:
            self._tags[tag] = version
            for old in [t for t in self._tags if t <= tag - HISTORY]:
                del self._tags[old]

    def match(self, prompts, tag: int | None = None) -> Version | None:
        """The version an answer with these prompts (and the session's prompts version
        `tag`, where the session tagged it) belongs to; None where unknown."""
        tagged = self._tags.get(tag) if tag is not None else None
        if tagged is not None:
            if not tagged.prompts:
                return None  # cleared: nothing of the old tracks is shown
            self._current = tagged
            return tagged if len(tagged.prompts) == len(prompts) else None
        handed = list(self._handed)
        exact = next((v for v in reversed(handed) if len(v.prompts) == len(prompts)
                      and all(same_prompt(a, b) for a, b in zip(v.prompts, prompts))), None)
        if not self.track:
            return exact
        if exact is not None and (self._current is None or exact.number >= self._current.number):
            self._current = exact
            while self._handed and self._handed[0] is not exact:
                self._handed.popleft()
            return exact
        current = self._current
        pending = handed[handed.index(current) + 1:] if current in handed else handed
        if any(not v.prompts for v in pending):
            return None  # cleared since: a tracker going on with the old prompts is not shown
        return current if current is not None and len(current.prompts) == len(prompts) else None


def entry_of(result: FrameResult, version: Version | None, made: str = "live") -> Entry:
    """A ring entry for one answer; masks are left out when the objects they answer are unknown."""
    record = result.record()
    n = len(result.masks)
    masks = []
    if version is not None and len(version.ids) == n:
        mm2 = record.get("mask_area_mm2")
        for k, object_id in enumerate(version.ids):
            prompt = result.prompts[k].to_json() if k < len(result.prompts) else {}
            masks.append({"id": object_id, "colour": colour(object_id), **(rle(result.masks[k]) or {"bbox": None,
                          "rle": []}), "area_px": record["mask_area"][k],
                          "area_mm2": None if mm2 is None else mm2[k],
                          "score": record["score"][k], "lost": bool(record["lost"][k]) if k < len(record["lost"])
                          else False, "prompt": prompt, "made": how_made(record, k, n)})
    enc = result.embedding
    own = enc if enc is not None and enc.frame_index == result.frame.index else None
    return Entry(frame=result.frame, masks=masks, record=record, prompts=list(result.prompts),
                 ids=None if version is None else version.ids, version=None if version is None else version.number,
                 enc=enc, own=own, seq=None if version is None else version.seq, made=made)


def jpeg(entry: Entry, quality: int) -> bytes:
    if entry.jpeg is None:
        bgr = cv2.cvtColor(entry.frame.image, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for frame {entry.index}")
        entry.jpeg = data.tobytes()
    return entry.jpeg


@dataclass(frozen=True)
class Packet:
    """One frame for the pages: the length-prefixed header, and the JPEG a page that has
    not drawn this frame needs."""

    head: bytes
    jpeg: bytes
    index: int
    frozen: bool


def packet(entry: Entry, quality: int, hud: dict, frozen: bool) -> Packet:
    frame = entry.frame
    header = {"frame": frame.index, "masks_frame": frame.index, "width": frame.width, "height": frame.height,
              "timestamp": round(float(frame.timestamp), 4), "masks": entry.masks, "edit": entry.seq,
              "frozen": frozen, "made": entry.made, "hud": hud}
    return Packet(pack(header), jpeg(entry, quality), frame.index, frozen)
