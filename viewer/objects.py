"""The objects a user prompts: ids, colours, a box and clicks each, edited by checked commands.

Every change makes a new version; the engine hands the version's prompts to the session
(or to the decoder on a frozen frame) and tags the masks that answer it with the ids.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from medsam_edge.contract import POINTS_MAX
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.viewer.protocol import MAX_OBJECTS, Refused, colour


@dataclass
class Obj:
    id: int
    box: list[float] | None = None
    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def prompt(self) -> Prompt:
        return Prompt.of(box=self.box, points=self.points or None, labels=self.labels or None)

    def to_json(self) -> dict:
        return {"id": self.id, "colour": colour(self.id),
                "box": None if self.box is None else [round(v, 2) for v in self.box],
                "points": [[round(x, 2), round(y, 2)] for x, y in self.points], "labels": list(self.labels)}


@dataclass(frozen=True, eq=False)  # compared by identity: the prompts hold arrays
class Version:
    """One state of the objects: what the session or the decoder is given, with the ids."""

    number: int
    ids: tuple[int, ...]
    prompts: tuple[Prompt, ...]
    seq: int | None  # the edit that made it, as the page numbered it


class Objects:
    """Thread-safe: the server's loop edits, the engine's threads read versions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Obj] = []
        self._next_id = 1
        self._version = Version(0, (), (), None)

    def apply(self, cmd: dict) -> dict:
        """An edit command from protocol.parse -> what to answer ({"id": ...}); Refused if it cannot be."""
        with self._lock:
            kind = cmd["type"]
            if kind == "add":
                if len(self._items) >= MAX_OBJECTS:
                    raise Refused(f"at most {MAX_OBJECTS} objects; delete one first")
                obj = Obj(self._next_id, cmd["box"], cmd["points"], cmd["labels"])
                self._next_id += 1
                self._items.append(obj)
            elif kind == "clear":
                self._items = []
                obj = None
            else:
                obj = self._find(cmd["id"])
                if kind == "point":
                    room = POINTS_MAX - (2 if obj.box is not None else 1)
                    if len(obj.points) >= room:
                        raise Refused(f"object {obj.id} has {len(obj.points)} points already; at most {room}")
                    obj.points = [*obj.points, cmd["point"]]
                    obj.labels = [*obj.labels, cmd["label"]]
                elif kind == "update":
                    obj.box, obj.points, obj.labels = cmd["box"], cmd["points"], cmd["labels"]
                elif kind == "delete":
                    self._items.remove(obj)
            self._bump(cmd.get("seq"))
            return {"id": None if obj is None else obj.id}

    def _find(self, object_id: int) -> Obj:
        for obj in self._items:
            if obj.id == object_id:
                return obj
        raise Refused(f"no object with id {object_id}")

    def _bump(self, seq: int | None) -> None:
        self._version = Version(self._version.number + 1, tuple(o.id for o in self._items),
                                tuple(o.prompt() for o in self._items), seq)

    def set_prompts(self, prompts: list[Prompt], ids: tuple[int, ...] | None = None, seq: int | None = None) -> None:
        """Replace the objects by `prompts` (starting prompts, or the tracked positions on a
        frame being frozen), keeping `ids` where given."""
        with self._lock:
            items = []
            for k, p in enumerate(prompts):
                if ids is not None and k < len(ids):
                    object_id = ids[k]
                else:
                    object_id, self._next_id = self._next_id, self._next_id + 1
                items.append(Obj(object_id, None if p.box is None else [float(v) for v in p.box],
                                 [[float(x), float(y)] for x, y in p.points], [int(v) for v in p.labels]))
            self._items = items
            self._bump(seq)

    def follow(self, prompts: list[Prompt], ids: tuple[int, ...]) -> None:
        """Move the objects still here to where `prompts` (an answer's, tracked) put them;
        objects deleted or added since that answer stay as they are."""
        with self._lock:
            where = dict(zip(ids, prompts))
            for obj in self._items:
                p = where.get(obj.id)
                if p is not None:
                    obj.box = None if p.box is None else [float(v) for v in p.box]
                    obj.points = [[float(x), float(y)] for x, y in p.points]
                    obj.labels = [int(v) for v in p.labels]
            self._bump(self._version.seq)

    @property
    def version(self) -> Version:
        with self._lock:
            return self._version

    def to_json(self) -> list[dict]:
        with self._lock:
            return [o.to_json() for o in self._items]
