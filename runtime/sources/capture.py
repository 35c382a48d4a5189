"""An OpenCV capture driven from a worker thread, so no open or read blocks for ever.

cv2.VideoCapture's open and read block inside C: a named pipe whose writer never comes
(or stops part-way), a camera that hangs, a network mount that stalls. FFmpeg's own
time-outs cover URLs only, and a thread blocked in C never sees Ctrl-C. Here every call
on the capture runs on one daemon thread; the caller waits on a queue with a time-out
(a wait Python interrupts for signals), and a capture that does not answer in time is
given up with a one-line InputError. The stuck thread is abandoned: it holds no lock the
run needs, and a daemon thread does not keep the process alive.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import cv2

from medsam_edge.errors import InputError

# Seconds: opening and the first frame (a camera warming up, a pipeline starting), then
# each later frame. A file on a local disk answers in milliseconds; a stalled pipe never.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
_main_waiting = threading.Event()  # the main thread is waiting for a capture's answer


def main_thread_waiting() -> bool:
    """Whether the main thread is waiting for a source: nothing of the run's is half-done
    then, so a stop request (Ctrl-C, SIGTERM) may end the wait at once."""
    return _main_waiting.is_set()


class ThreadedCapture:
    """The subset of cv2.VideoCapture the sources use: isOpened, read, get, set, release.

    `get(cv2.CAP_PROP_POS_MSEC)` answers for the last frame read, fetched with it."""

    def __init__(self, factory: Callable[[], cv2.VideoCapture], description: str,
                 open_timeout: float = OPEN_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S,
                 unblock: Callable[[], None] | None = None) -> None:
        """unblock: called when opening times out, to end the worker's wait where that can be
        done (a FIFO: open its write end once). OpenCV holds a process-wide lock while FFmpeg
        opens an input, so a worker stuck there would stall every later capture and writer."""
        self.description = description
        self._unblock = unblock
        self.read_timeout = read_timeout
        self._first_timeout = max(open_timeout, read_timeout)
        self._requests: queue.Queue = queue.Queue()
        self._answers: queue.Queue = queue.Queue()
        self._stuck = False
        self._msec = float("nan")
        self._worker = threading.Thread(target=self._serve, args=(factory,), name="medsam-edge capture", daemon=True)
        self._worker.start()
        try:
            self._opened, self._props = self._wait(open_timeout, "opening it")
        except InputError:
            if self._unblock is not None:
                self._unblock()
                self.release()
            raise

    def _serve(self, factory: Callable[[], cv2.VideoCapture]) -> None:
        try:
            cap = factory()
            opened = cap.isOpened()
            props = {p: cap.get(p) for p in (cv2.CAP_PROP_FPS, cv2.CAP_PROP_FRAME_COUNT)} if opened else {}
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._answers.put(e)
            return
        self._answers.put((opened, props))
        while True:
            request = self._requests.get()
            if request is None:
                cap.release()
                return
            name, args = request
            try:
                if name == "read":
                    ok, picture = cap.read()
                    answer: Any = (ok, picture, cap.get(cv2.CAP_PROP_POS_MSEC) if ok else float("nan"))
                else:
                    answer = getattr(cap, name)(*args)
            except BaseException as e:  # noqa: BLE001
                answer = e
            self._answers.put(answer)

    def _wait(self, timeout: float, doing: str) -> Any:
        main = threading.current_thread() is threading.main_thread()
        if main:
            _main_waiting.set()
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            self._stuck = True
            raise InputError(f"{self.description}: no answer for {timeout:g} s while {doing} (the source stalled: "
                             "a pipe with no writer, a hung device or mount); --read-timeout sets the wait") from None
        finally:
            if main:
                _main_waiting.clear()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        if self._stuck:
            raise InputError(f"{self.description}: the source stalled earlier and does not answer")
        self._requests.put((name, args))
        return self._wait(self.read_timeout if timeout is None else timeout, "reading" if name == "read" else name)

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return bool(self._opened) and not self._stuck and self._worker.is_alive()

    def read(self) -> tuple[bool, Any]:
        # The first frame may take as long as opening did (a camera warming up).
        timeout, self._first_timeout = self._first_timeout, self.read_timeout
        ok, picture, self._msec = self._call("read", timeout=timeout)
        return ok, picture

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return self._msec
        if prop in self._props:
            return self._props[prop]
        return self._call("get", prop)

    def set(self, prop: int, value: float) -> bool:
        return self._call("set", prop, value)

    def release(self) -> None:
        """Ask the worker to release the capture; never waits for a stuck one."""
        if self._worker.is_alive():
            self._requests.put(None)
