"""The session interface runtime.stream.Stream (and any integrator's loop) relies on.

Two kinds of session share it: the deterministic runtime.session.Session answers each
frame inside process(); runtime.realtime.RealtimeSession takes frames with submit() and
answers them in its own time through next_result(). `realtime` says which one a session is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    from medsam_edge.runtime.result import FrameResult
    from medsam_edge.runtime.session import Stats


@runtime_checkable
class StreamSession(Protocol):
    """What both kinds have: their counters, prompts changed between frames, closing."""

    realtime: bool
    closed: bool
    stats: "Stats"

    def set_prompts(self, prompts) -> int:
        """New prompts from the next frame on; returns the version answers to them carry."""

    def close(self) -> None: ...


@runtime_checkable
class ProcessingSession(StreamSession, Protocol):
    """Deterministic: every frame answered before process() returns."""

    def process(self, image, timestamp: float | None = None, read_ms: float = 0.0) -> "FrameResult": ...


@runtime_checkable
class SubmittingSession(StreamSession, Protocol):
    """Real time: submit() never blocks; next_result() answers in order, None once ended."""

    def submit(self, image, timestamp: float | None = None) -> None: ...

    def end(self) -> None: ...

    def next_result(self, timeout: float | None = None) -> "FrameResult | None": ...


AnySession = Union[ProcessingSession, SubmittingSession]
