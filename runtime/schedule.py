"""Per-frame prompts from a file: a frame's prompts hold until the next frame the file names.

File formats:
- JSON object: {"0": [[x0,y0,x1,y1], ...], "40": [...]}; an entry may also be a prompt
  object {"box": [x0,y0,x1,y1], "points": [[x,y], ...], "labels": [1, 0, ...]} (labels
  default to 1, positive), so boxes, clicks and both mix freely.
- JSON list: [{"frame": 0, "boxes": [[...]]}, {"frame": 12, "prompts": [{...}]}, ...].
- CSV: a header with frame,x0,y0,x1,y1; one row per box.
"""

from __future__ import annotations

import csv
import json
from bisect import bisect_right
from pathlib import Path

from medsam_edge.errors import InputError
from medsam_edge.runtime.prompts import Prompt


class PromptSchedule:
    """Prompts by frame index; `prompts_for(i)` holds the last named frame's until the next."""

    def __init__(self, by_frame: dict[int, list[Prompt]]) -> None:
        self.frames = sorted(by_frame)
        self.by_frame = by_frame

    @classmethod
    def constant(cls, prompts) -> "PromptSchedule":
        """The same prompts for every frame (Prompt objects or (N, 4) boxes)."""
        from medsam_edge.runtime.prompts import as_prompts

        return cls({0: as_prompts(prompts)})

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptSchedule":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: prompts file not found")
        try:
            text = path.read_text()
            entries = _read_csv(text) if path.suffix.lower() == ".csv" else _read_json(text)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
            raise InputError(f"{path}: not a prompts file ({e}); see `medsam-edge run --help` for the format") from None
        if not entries:
            raise InputError(f"{path}: no prompts in the file")
        by_frame: dict[int, list[Prompt]] = {}
        for frame, prompt in entries:
            if frame < 0:
                raise InputError(f"{path}: frame index {frame} is negative")
            by_frame.setdefault(frame, []).append(prompt)
        return cls(by_frame)

    def prompts_for(self, index: int) -> list[Prompt]:
        i = bisect_right(self.frames, index) - 1
        return list(self.by_frame[self.frames[i]]) if i >= 0 else []

    def starts_at(self, index: int) -> bool:
        """True where the file names prompts for exactly this frame (they override propagation)."""
        return index in self.by_frame

    @property
    def last_frame(self) -> int:
        return self.frames[-1] if self.frames else -1


def _prompt(entry) -> Prompt:
    if isinstance(entry, dict):
        unknown = set(entry) - {"box", "points", "labels"}
        if unknown:
            raise ValueError(f"unknown prompt keys {sorted(unknown)}; expected box, points, labels")
        box = entry.get("box")
        points = entry.get("points")
        if box is not None and len(box) != 4:
            raise ValueError(f"box {box} is not four numbers")
        if points is not None and any(len(p) != 2 for p in points):
            raise ValueError(f"points {points} are not [x, y] pairs")
        return Prompt.of(box=None if box is None else [float(v) for v in box],
                         points=None if points is None else [[float(x), float(y)] for x, y in points],
                         labels=entry.get("labels"))
    values = [float(v) for v in entry]
    if len(values) != 4:
        raise ValueError(f"box {entry} is not four numbers")
    return Prompt.of(box=values)


def _read_json(text: str) -> list[tuple[int, Prompt]]:
    data = json.loads(text)
    if isinstance(data, dict):
        items = data.items()
    else:
        items = ((d["frame"], d["prompts"] if "prompts" in d else d["boxes"]) for d in data)
    out = []
    for frame, entries in items:
        # One bare box or prompt object may stand for a list of one.
        if isinstance(entries, dict) or (entries and not isinstance(entries[0], (list, tuple, dict))):
            entries = [entries]
        out.extend((int(frame), _prompt(e)) for e in entries)
    return out


def _read_csv(text: str) -> list[tuple[int, Prompt]]:
    rows = csv.DictReader(text.splitlines())
    return [(int(r["frame"]), Prompt.of(box=[float(r[k]) for k in ("x0", "y0", "x1", "y1")])) for r in rows]
