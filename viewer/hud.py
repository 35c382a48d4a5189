"""The heads-up line: what ran, how fast, and how old the picture behind the mask is.

Records are read defensively (`.get`): the real-time session's records gain fields
saying how each mask was made and how old its decode is; whatever of them a record
carries is passed on, and ages fall back to what every record has (embedding_frame).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

import numpy as np

# Record fields every version has that say how a frame's masks were made.
MADE_KEYS = ("reuse", "fresh", "embedding_frame", "staleness")
# Newer records' names for the same story (how each mask was made, the age of its decode):
# any field whose name holds one of these words is passed on as it comes.
MADE_WORDS = ("made", "decode", "warp", "age")
SKIP_KEYS = {"latency_ms", "prompts", "mask_area", "score", "lost", "refined", "index", "timestamp", "backend",
             "notes", "motion", "mask_area_mm2", "equivalent_diameter_mm"}
WINDOW_S = 2.0  # masks per second over the last seconds
LATENCIES = 300  # capture-to-mask percentiles over the last answers


def how_made(record: dict, k: int, n: int) -> dict:
    """How prompt k's mask (of n) on this record's frame was made."""
    out = {key: record[key] for key in MADE_KEYS if key in record}
    motion = record.get("motion")
    if isinstance(motion, dict) and "applied" in motion:
        out["motion_applied"] = bool(motion["applied"])
    for key, value in record.items():
        if key in SKIP_KEYS or key in out or not any(w in key for w in MADE_WORDS):
            continue
        out[key] = value[k] if isinstance(value, list) and len(value) == n else value
    return out


class Hud:
    def __init__(self, described: dict, stale_ms: float) -> None:
        self.described = described
        self.stale_ms = stale_ms
        self._lock = threading.Lock()
        self._times: deque[float] = deque()
        self._latencies: deque[float] = deque(maxlen=LATENCIES)
        self._stamps: OrderedDict[int, float] = OrderedDict()  # frame index -> timestamp (s)
        self.answered = 0

    def add(self, record: dict) -> None:
        """One live answer."""
        now = time.monotonic()
        with self._lock:
            self.answered += 1
            self._times.append(now)
            while self._times and now - self._times[0] > WINDOW_S:
                self._times.popleft()
            latency = (record.get("latency_ms") or {}).get("capture_to_mask")
            if latency is not None:
                self._latencies.append(float(latency))
            self._stamps[int(record["index"])] = float(record.get("timestamp", 0.0))
            while len(self._stamps) > 4096:
                self._stamps.popitem(last=False)

    def stamp(self, index: int, timestamp: float) -> None:
        with self._lock:
            self._stamps[index] = timestamp

    def snapshot(self, record: dict | None) -> dict:
        """The HUD for the frame on screen (its record), with the session's rates."""
        with self._lock:
            span = (self._times[-1] - self._times[0]) if len(self._times) > 1 else 0.0
            rate = (len(self._times) - 1) / span if span > 0 else 0.0
            lat = np.asarray(self._latencies) if self._latencies else None
            stamps = dict(self._stamps) if record else {}
        out = {"backend": self.described.get("backend"), "device": self.described.get("device"),
               "precision": self.described.get("precision"), "masks_per_s": round(rate, 2),
               "capture_to_mask_ms": None if lat is None else
               {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)},
               "embedding_age": None, "decode_age": None, "stale": False}
        if not record:
            return out
        index, stamp = int(record["index"]), float(record.get("timestamp", 0.0))
        out["embedding_age"] = _age(index, stamp, record.get("embedding_frame"), stamps)
        decode_frame = record.get("decode_frame", index)
        out["decode_age"] = _age(index, stamp, decode_frame if isinstance(decode_frame, int) else index, stamps)
        if "decode_age_ms" in record:  # a record that says it itself wins
            out["decode_age"]["ms"] = record["decode_age_ms"]
        age_ms = max((a or {}).get("ms") or 0.0 for a in (out["embedding_age"], out["decode_age"]))
        out["stale"] = bool(age_ms > self.stale_ms or any(record.get("lost") or []))
        return out


def _age(index: int, stamp: float, source_frame, stamps: dict) -> dict | None:
    if not isinstance(source_frame, int) or source_frame < 0:
        return None
    frames = max(0, index - source_frame)
    then = stamps.get(source_frame)
    ms = None if then is None else round(max(0.0, stamp - then) * 1e3, 1)
    return {"frame": source_frame, "frames": frames, "ms": 0.0 if frames == 0 else ms}
