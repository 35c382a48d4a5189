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


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def _kind(value) -> str:
    return _JSON_KINDS.get(type(value), "a value")


def _read_json(text: str) -> list[tuple[int, Prompt]]:
    """Errors name the entry (its frame, or its place in the list) in the file's own terms."""
    data = json.loads(text)
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = []
        for n, d in enumerate(data):
            if not isinstance(d, dict) or "frame" not in d or not ("prompts" in d or "boxes" in d):
                raise ValueError(f'entry {n}: expected {{"frame": N, "prompts": [...]}}, got {_kind(d)}')
            items.append((d["frame"], d["prompts"] if "prompts" in d else d["boxes"]))
    else:
        raise ValueError(f"expected an object or a list at the top, got {_kind(data)}")
    out = []
    for frame, entries in items:
        try:
            index = int(frame)
        except (TypeError, ValueError):
            raise ValueError(f"frame {frame!r} is not a whole number") from None
        if not isinstance(entries, (list, dict)) or not entries:
            raise ValueError(f"frame {frame}: expected a box, a prompt object or a list of them, got {_kind(entries)}")
        # One bare box or prompt object may stand for a list of one.
        if isinstance(entries, dict) or not isinstance(entries[0], (list, tuple, dict)):
            entries = [entries]
        for entry in entries:
            try:
                out.append((index, _prompt(entry)))
            except (TypeError, ValueError, InputError) as e:
                why = str(e) if not isinstance(e, TypeError) else f"expected numbers, got {_kind(entry)}"
                raise ValueError(f"frame {frame}: {why}") from None
    return out


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None


def _read_csv(text: str) -> list[tuple[int, Prompt]]:
    """Errors name the line, as a text editor counts them."""
    columns = ("frame", "x0", "y0", "x1", "y1")
    rows = csv.DictReader(text.splitlines())
    missing = [c for c in columns if c not in (rows.fieldnames or [])]
    if missing:
        raise ValueError(f"line 1: the header lacks {', '.join(missing)} (expected {','.join(columns)})")
    out = []
    for row in rows:
        try:
            values = [row[c] for c in columns]
            if any(v is None for v in values):
                raise ValueError(f"{sum(v is None for v in values)} of its {len(columns)} values are missing")
            out.append((_number(values[0], int), Prompt.of(box=[_number(v, float) for v in values[1:]])))
        except (ValueError, InputError) as e:
            raise ValueError(f"line {rows.line_num}: {e}") from None
    return out
