"""The stream model's bounded per-stream embedding cache (pure Python, no Triton).

At most `max_streams` streams, each holding its newest `slots` embeddings; a new stream
past the bound evicts the least recently used one, and a stream idle for `idle_s`
seconds is dropped at the next request. Memory is bounded by
max_streams * slots * 4 MiB (engines.triton_protocol.server_memory_bytes). Generations are unique per
server process (a random 32-bit epoch above a counter), so a handle from before a
restart never names an embedding of the new process.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from medsam_edge.engines.triton_protocol import expired_message


class Expired(LookupError):
    """The embedding is not held; str() is the message the client gets."""


class StreamCache:
    def __init__(self, max_streams: int, slots: int, idle_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_streams < 1 or slots < 1:
            raise ValueError("max_streams and slots must be at least 1")
        self.max_streams, self.slots, self.idle_s = int(max_streams), int(slots), float(idle_s)
        self._clock = clock
        self._lock = threading.Lock()
        # stream id -> (last use, OrderedDict generation -> embedding), least recent first
        self._streams: OrderedDict[int, tuple[float, OrderedDict]] = OrderedDict()
        self._next = secrets.randbits(32) << 32
        self.evicted_streams = 0

    def put(self, stream_id: int, embedding: Any) -> int:
        """Keep `embedding` as the stream's newest; -> its generation."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            self._next += 1
            generation = self._next
            _, held = self._streams.pop(stream_id, (now, OrderedDict()))
            held[generation] = embedding
            while len(held) > self.slots:
                held.popitem(last=False)
            self._streams[stream_id] = (now, held)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
                self.evicted_streams += 1
            return generation

    def get(self, stream_id: int, generation: int) -> Any:
        """The embedding, or Expired saying why it is gone."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            entry = self._streams.get(stream_id)
            if entry is None:
                raise Expired(expired_message(stream_id, generation, "stream unknown: evicted by newer streams, "
                                              "released, idle too long, or the server restarted"))
            held = entry[1]
            if generation not in held:
                raise Expired(expired_message(stream_id, generation, f"the stream keeps its newest {self.slots}"))
            self._streams[stream_id] = (now, held)
            self._streams.move_to_end(stream_id)
            return held[generation]

    def release(self, stream_id: int) -> bool:
        with self._lock:
            return self._streams.pop(stream_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def _sweep(self, now: float) -> None:
        # Least recently used first, so the scan stops at the first stream still in use.
        while self._streams:
            sid, (last, _) = next(iter(self._streams.items()))
            if now - last <= self.idle_s:
                break
            del self._streams[sid]
