"""What travels on the viewer's socket, and the checks every message from a page passes.

Server -> page:
  binary  one frame: 4-byte big-endian header length, the header (UTF-8 JSON), the JPEG (left
          out when the page has drawn that very frozen frame already: an edit's answer).
          header: {"frame": index, "masks_frame": the frame the masks were computed for
          (always the same index: a mask is never drawn on another frame), "width",
          "height", "timestamp", "masks": [{"id", "colour", "bbox": [x, y, w, h],
          "rle": [runs], "area_px", "score", "lost"}], "edit": the last edit seq this
          frame's masks answer (or null), "hud": {...}}.
          rle: run lengths over the bbox, row-major, alternating off/on, starting off.
  text    {"type": "hello", "viewer": id, "role": "controller"|"watcher", "token_required": bool}
          {"type": "state", "state": {...}}        (viewer.state; GET /api/state returns the same)
          {"type": "ok", "seq": n, ...}  /  {"type": "refused", "seq": n|null, "reason": "..."}
          {"type": "role", "role": ..., "controller": id}
Page -> server (text, JSON objects, at most MAX_MESSAGE_BYTES; all coordinates in frame pixels):
  {"type": "ack", "frame": n, "drawn": bool}                    a frame was drawn, or passed over (flow control)
  {"seq": n, "type": "add", "box": [x0, y0, x1, y1]}            a new object (box and/or "points"/"labels")
  {"seq": n, "type": "point", "id": k, "point": [x, y], "label": 1|0}   a click on object k
  {"seq": n, "type": "update", "id": k, "box": [...]|null, "points": [[x, y], ...], "labels": [...]}
  {"seq": n, "type": "delete", "id": k}    {"seq": n, "type": "clear"}
  {"seq": n, "type": "freeze"} / "unfreeze" / {"type": "seek", "frame": n} or {"type": "seek", "step": +-k}
  {"seq": n, "type": "record", "on": true|false}    {"seq": n, "type": "take_control"}
Each bad message is refused on its own, with the reason; the session goes on.
"""

from __future__ import annotations

import json
import math
import struct
import time

import numpy as np

from medsam_edge.contract import CLICK_LABELS, POINTS_MAX

# A page's messages are small (one prompt edit); anything near this is not from the page.
MAX_MESSAGE_BYTES = 16 * 1024
# Objects per session: each costs a decoder pass per answered frame.
MAX_OBJECTS = 16
# Messages per second a page may send (a drag sends ~20 updates/s, acks come at the frame
# rate): twice the rate of a 60 fps stream's acks plus a drag, with a burst of two seconds.
RATE_PER_S = 150.0
BURST = 300.0
TYPES = ("ack", "add", "point", "update", "delete", "clear", "freeze", "unfreeze", "seek", "record",
         "take_control")
EDITS = ("add", "point", "update", "delete", "clear")
# BGR-free, CSS colours per object id (cycled): the palette of the overlay video, as #rrggbb.
COLOURS = ("#00ff00", "#ff00ff", "#ffff00", "#0080ff", "#ff8000", "#00ffff", "#ff0080", "#ff0000")


class Refused(Exception):
    """A page's message that cannot be carried out; str() is the reason sent back."""


def colour(object_id: int) -> str:
    return COLOURS[(object_id - 1) % len(COLOURS)]


def _reject_constant(name: str):
    raise Refused(f"{name} is not a finite number")


def parse(raw: str | bytes, width: int, height: int) -> dict:
    """One message from a page -> a checked command dict; Refused names what is wrong."""
    if isinstance(raw, bytes):
        raise Refused("binary messages are not accepted; send JSON text")
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise Refused(f"message of {len(raw)} characters; at most {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = json.loads(raw, parse_constant=_reject_constant)
    except Refused:
        raise
    except (ValueError, RecursionError):
        raise Refused("not JSON") from None
    if not isinstance(msg, dict):
        raise Refused("expected a JSON object")
    kind = msg.get("type")
    if kind not in TYPES:
        raise Refused(f"unknown type {str(kind)[:40]!r}; expected one of {', '.join(TYPES)}")
    seq = msg.get("seq")
    if seq is not None and not _is_int(seq):
        raise Refused("seq must be a whole number")
    out: dict = {"type": kind, "seq": seq}
    if kind == "ack":
        out["frame"] = _int(msg, "frame")
        out["drawn"] = msg.get("drawn", True) is True
    elif kind == "add":
        _prompt(msg, out, width, height, "add: give a box or at least one point")
    elif kind == "point":
        out["id"] = _int(msg, "id")
        point = msg.get("point")
        (out["point"],), _ = points_in([point], None, width, height, True)
        label = msg.get("label", 1)
        if not _is_int(label) or label not in CLICK_LABELS:
            raise Refused(f"label {str(label)[:20]}: expected 1 (positive) or 0 (negative)")
        out["label"] = int(label)
    elif kind == "update":
        out["id"] = _int(msg, "id")
        _prompt(msg, out, width, height, "update: an object keeps a box or at least one point (delete it instead)")
    elif kind == "delete":
        out["id"] = _int(msg, "id")
    elif kind == "seek":
        if "frame" in msg:
            out["frame"] = _int(msg, "frame")
        else:
            step = _int(msg, "step")
            out["step"] = step
    elif kind == "record":
        on = msg.get("on")
        if not isinstance(on, bool):
            raise Refused("record: 'on' must be true or false")
        out["on"] = on
    return out


def _prompt(msg: dict, out: dict, width: int, height: int, empty: str) -> None:
    """A whole prompt (box and/or clicks) into `out`; `empty` is the reason when it has neither."""
    box = msg.get("box")
    out["box"] = None if box is None else box_in(box, width, height)
    out["points"], out["labels"] = points_in(msg.get("points", []), msg.get("labels"), width, height,
                                             out["box"] is not None)
    if out["box"] is None and not out["points"]:
        raise Refused(empty)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53


def _int(msg: dict, key: str) -> int:
    value = msg.get(key)
    if not _is_int(value):
        raise Refused(f"{key} must be a whole number, got {str(value)[:20]}")
    return int(value)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"{what}: expected a number, got {str(value)[:20]}")
    value = float(value)
    if not math.isfinite(value):
        raise Refused(f"{what}: not a finite number")
    return value


def box_in(box, width: int, height: int) -> list[float]:
    """x0, y0, x1, y1 inside the width x height frame, at least one pixel each way."""
    if not isinstance(box, list) or len(box) != 4:
        raise Refused("box: expected [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (_number(v, "box") for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise Refused(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}]: not inside the {width}x{height} frame with "
                      "x0 < x1 and y0 < y1")
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise Refused(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}]: smaller than one pixel")
    return [x0, y0, x1, y1]


def points_in(points, labels, width: int, height: int, with_box: bool) -> tuple[list[list[float]], list[int]]:
    """Clicks inside the frame with 0/1 labels (default 1), no more than the decoder takes."""
    if not isinstance(points, list):
        raise Refused("points: expected [[x, y], ...]")
    room = POINTS_MAX - (2 if with_box else 1)
    if len(points) > room:
        raise Refused(f"{len(points)} points; at most {room} {'beside a box' if with_box else 'without a box'}")
    out = []
    for p in points:
        if not isinstance(p, list) or len(p) != 2:
            raise Refused("point: expected [x, y]")
        x, y = _number(p[0], "point"), _number(p[1], "point")
        if not (0 <= x < width and 0 <= y < height):
            raise Refused(f"point [{x:g}, {y:g}]: outside the {width}x{height} frame")
        out.append([x, y])
    if labels is None:
        labels = [1] * len(out)
    if not isinstance(labels, list) or len(labels) != len(out):
        raise Refused(f"labels: expected one 1 or 0 per point ({len(out)})")
    if any(not _is_int(v) or v not in CLICK_LABELS for v in labels):
        raise Refused("labels: expected 1 (positive) or 0 (negative) per point")
    return out, [int(v) for v in labels]


class RateLimit:
    """A token bucket: a page that floods is refused message by message, then recovers."""

    def __init__(self, rate: float = RATE_PER_S, burst: float = BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# -- masks and frames on the wire -------------------------------------------------------------
def rle(mask: np.ndarray) -> dict | None:
    """(H, W) bool -> {"bbox": [x, y, w, h], "rle": runs} over the bbox (off first), None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    flat = np.ascontiguousarray(mask[y0:y1, x0:x1]).reshape(-1).view(np.uint8)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return {"bbox": [x0, y0, x1 - x0, y1 - y0], "rle": runs.tolist()}


def rle_decode(encoded: dict | None, width: int, height: int) -> np.ndarray:
    """The inverse of rle(): an (height, width) bool mask."""
    mask = np.zeros((height, width), bool)
    if not encoded:
        return mask
    x, y, w, h = encoded["bbox"]
    values = np.zeros(len(encoded["rle"]), bool)
    values[1::2] = True
    mask[y:y + h, x:x + w] = np.repeat(values, encoded["rle"]).reshape(h, w)
    return mask


def pack(header: dict, jpeg: bytes = b"") -> bytes:
    """One frame message; without `jpeg`, the header alone (the page keeps the picture it drew)."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return struct.pack(">I", len(head)) + head + jpeg


def unpack(packet: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack(">I", packet[:4])
    return json.loads(packet[4:4 + n]), packet[4 + n:]
