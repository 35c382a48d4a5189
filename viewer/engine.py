"""The viewer's engine: a source played through the real-time session, frozen and edited.

Threads, data one way: capture (reads the source at its own rate, submits each frame)
-> the session's decoder (on_result) -> publisher (ring entries, the newest frame out
as a packet, recording) -> the server's emit(). While frozen, a file source waits and a
live one is read and dropped (counted); the editor answers prompt edits on the frozen
frame with the decoder alone, on that frame's own embedding (encoded once, at freeze,
when the answer on screen came from an older frame's embedding).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from medsam_edge.errors import InputError
from medsam_edge.runtime.frame import is_blank
from medsam_edge.runtime.prompts import validate_prompts
from medsam_edge.runtime.result import FRESH, FrameResult
from medsam_edge.runtime.measure import measurements
from medsam_edge.viewer import recorder
from medsam_edge.viewer.hud import Hud
from medsam_edge.viewer.objects import Objects
from medsam_edge.viewer.protocol import Refused
from medsam_edge.viewer.publish import Packet, Versions, entry_of, packet
from medsam_edge.viewer.ring import Entry, Ring
from medsam_edge.viewer.state import source_info

log = logging.getLogger("medsam_edge.view")
WAITING_ANSWERS = 64  # answers waiting for the publisher at most; older ones are dropped


class Engine:
    def __init__(self, predictor, source, objects: Objects, *, track: bool = False, pixel_calibration=None,
                 buffer_seconds: float = 3.0, stale_ms: float = 1000.0, jpeg_quality: int = 80,
                 record_dir: Path = Path("recordings"), dicom_seg: Callable | None = None) -> None:
        self.predictor, self.source, self.objects = predictor, source, objects
        self.segmenter = predictor.segmenter
        self.track, self.pixel_calibration, self.quality = track, pixel_calibration, jpeg_quality
        self.record_dir, self._dicom_seg = Path(record_dir), dicom_seg
        self.source_info = source_info(source)
        self.hud = Hud(predictor.backend.describe(), stale_ms)
        self.ring = Ring(buffer_seconds, source.fps)
        self.versions = Versions(track)
        self.status, self.message = "starting", None
        self.on_screen: Entry | None = None
        self.frozen: Entry | None = None
        self.edited = False  # prompts edited since the freeze
        self.recording: recorder.Recording | None = None
        self.last_recording: dict | None = None
        self.counters = {"captured": 0, "answered": 0, "published": 0, "dropped_while_frozen": 0,
                         "dropped_before_publishing": 0}
        self.emit: Callable[[Packet], None] = lambda packet: None
        self.changed: Callable[[], None] = lambda: None
        self._cond = threading.Condition()
        self._answers: deque[FrameResult] = deque()
        self._edit_wanted = False
        self._received = 0  # answers the session gave
        self._publishing = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.session = predictor.session(realtime=True, on_result=self._on_result, track=track,
                                         description=getattr(source, "description", "viewer"))
        self._hand(objects.version)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, paused: bool = False, start_frame: int = 0) -> None:
        for target, name in ((self._capture, "medsam-view-capture"), (self._publish_loop, "medsam-view-publish"),
                             (self._edit_loop, "medsam-view-edit")):
            t = threading.Thread(target=target, args=(paused, start_frame) if target == self._capture else (),
                                 name=name, daemon=True)
            self._threads.append(t)
            t.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.stop_recording("the viewer was stopped", interrupted=True)
        self.session.close()
        self.source.close()
        for t in self._threads:
            t.join(timeout=10)

    def _say(self, status: str, message: str | None = None) -> None:
        self.status, self.message = status, message
        if message:
            log.info("%s", message)
        self.changed()

    # -- capture ---------------------------------------------------------------------------------
    def _capture(self, paused: bool, start_frame: int) -> None:
        live = bool(getattr(self.source, "is_live", False))
        origin = None
        seen = 0
        try:
            for frame in self.source:
                if self._closed:
                    return
                seen += 1
                if frame.index < start_frame:
                    continue
                self.hud.stamp(frame.index, frame.timestamp)
                if paused:
                    paused = False
                    self._open_frozen(frame)
                with self._cond:
                    if self.frozen is not None and live:
                        self.counters["dropped_while_frozen"] += 1
                        continue
                    self._cond.wait_for(lambda: self.frozen is None or self._closed)
                    if self._closed:
                        return
                if self.status == "starting":
                    self._say("playing")
                if not live:  # a file plays at its own rate, as a probe would deliver it
                    now = time.perf_counter()
                    if origin is None or origin + frame.timestamp < now - 1.0:
                        origin = now - frame.timestamp  # first frame, or after a freeze or a stall
                    with self._cond:
                        self._cond.wait_for(lambda: self._closed, max(0.0, origin + frame.timestamp - now))
                frame.captured_at = time.perf_counter()
                self.session.submit(frame)
                self.counters["captured"] += 1
            if seen <= start_frame:
                raise InputError(f"--start-frame {start_frame}: the source has only {seen} frames")
            self._drain()
            self._ended("ended", f"the source ended after {seen} frames; the last frame stays on screen")
        except Exception as e:  # a source or session failure: said on the page, the last frame kept
            if not self._closed:
                why = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
                self._ended("failed", f"the source failed: {why}; the last frame stays on screen")
        finally:
            self.session.end()

    def _drain(self, timeout: float = 60.0) -> None:
        """Wait until the frames submitted are answered (or dropped) and published: the end
        is said with the last answer on screen."""
        self.session.end()
        stats = self.session.stats
        deadline = time.monotonic() + timeout
        with self._cond:
            # Polled: the session counts what it drops, passes over or skips as blank without telling.
            while not (self._closed or time.monotonic() > deadline or (
                    not self._answers and not self._publishing
                    and self._received + stats.dropped + stats.passed + stats.blank >= self.counters["captured"])):
                self._cond.wait(0.2)

    def _ended(self, status: str, message: str) -> None:
        self._say(status, message)
        self.stop_recording(f"the source {status}")

    def _open_frozen(self, frame) -> None:
        """--paused: the first frame shown is frozen, its own embedding and the starting prompts decoded."""
        version = self.objects.version
        own = self.segmenter.encode(frame.image, frame.index)
        entry = Entry(frame=frame, masks=[], record={"index": frame.index, "timestamp": frame.timestamp},
                      ids=(), version=-1, enc=own, own=own)
        with self._cond:
            self.frozen = self.on_screen = entry
            self.status = "paused"
        self.ring.add(entry)
        if version.prompts:
            self._decode_frozen(entry)
        else:
            self._show(entry)
        self.changed()

    # -- answers ---------------------------------------------------------------------------------
    def _on_result(self, result: FrameResult) -> None:
        with self._cond:
            self._received += 1
            if len(self._answers) >= WAITING_ANSWERS:
                self._answers.popleft()
                self.counters["dropped_before_publishing"] += 1
            self._answers.append(result)
            self._cond.notify_all()

    def _publish_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._answers or self._closed)
                if self._closed:
                    return
                batch = list(self._answers)
                self._answers.clear()
                self._publishing = True
            newest = None
            for result in batch:
                if result.blank or is_blank(result.frame.image):
                    continue
                result.measurements = measurements(result.masks, self.pixel_calibration)
                entry = entry_of(result, self.versions.match(result.prompts, result.prompts_version))
                self.ring.add(entry)
                self.hud.add(entry.record)
                self.counters["answered"] += 1
                rec = self.recording
                if rec is not None:
                    rec.feed.put(result)
                newest = entry
            with self._cond:
                shown = newest is not None and self.frozen is None
                if shown:
                    self.on_screen = newest
            if shown:
                self._show(newest)
            with self._cond:
                self._publishing = False
                self._cond.notify_all()

    def _show(self, entry: Entry) -> None:
        try:
            data = packet(entry, self.quality, self.hud.snapshot(entry.record), self.frozen is not None)
        except RuntimeError as e:
            log.warning("%s", e)
            return
        self.counters["published"] += 1
        self.emit(data)

    # -- prompts, freeze, scroll -----------------------------------------------------------------
    def _hand(self, version) -> None:
        # The session's tag for these prompts: answers carrying it are this version's (an
        # answer published before the tag is recorded falls back to matching its prompts).
        self.versions.handed(version, self.session.set_prompts(list(version.prompts)))

    def edit(self, cmd: dict) -> dict:
        """A checked edit command from a page (protocol.parse): applied, then answered."""
        with self._cond:
            shown = self.on_screen
            if self.frozen is None and self.track and shown is not None and shown.ids:
                # Tracked prompts have moved since they were given: edits start from where they are.
                self.objects.follow(shown.prompts, shown.ids)
        answer = self.objects.apply(cmd)
        version = self.objects.version
        with self._cond:
            frozen = self.frozen is not None
            if frozen:
                self.edited = True
                self._edit_wanted = True
                self._cond.notify_all()
        if not frozen:
            self._hand(version)
        self.changed()
        return answer

    def freeze(self) -> None:
        with self._cond:
            if self.frozen is not None:
                return
            entry = self.on_screen or self.ring.newest()
            if entry is None:
                raise Refused("no frame to freeze yet")
            self.frozen, self.edited = entry, False
            self._follow(entry)  # the prompts on screen (tracked positions) are what edits start from
            self._edit_wanted = True  # its own embedding, so edits cost the decoder alone
            self._cond.notify_all()
        self._show(entry)
        self.changed()

    def unfreeze(self) -> None:
        with self._cond:
            if self.frozen is None:
                return
            self.frozen, self.edited = None, False
            self.status = "playing" if self.status == "paused" else self.status  # an ended source stays ended
            self._hand(self.objects.version)  # tracking (with --track) restarts from the edited prompts
            self._cond.notify_all()
        self.changed()

    def seek(self, frame: int | None = None, step: int | None = None) -> None:
        with self._cond:
            if self.frozen is None:
                raise Refused("seek: freeze first; scrolling is through the frames kept while frozen")
            here = self.frozen.index
            entry = self.ring.get(frame) if frame is not None else self.ring.step(here, step or 0)
            if entry is None:
                span = self.ring.span()
                raise Refused(f"frame {frame} is not kept; frames {span['first']}-{span['last']} are")
            self.frozen = self.on_screen = entry
            if self.edited:
                self._edit_wanted = True  # the edited prompts, on this frame
                self._cond.notify_all()
            else:
                self._follow(entry)
        self._show(entry)
        self.changed()

    def _follow(self, entry: Entry) -> None:
        if entry.ids is not None:
            self.objects.follow(entry.prompts, entry.ids)
            version = self.objects.version
            if version.ids == entry.ids:
                entry.version = version.number

    def _edit_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._edit_wanted or self._closed)
                if self._closed:
                    return
                self._edit_wanted = False
                entry = self.frozen
            if entry is None:
                continue
            try:
                self._decode_frozen(entry)
            except Exception as e:  # an edit the model cannot take: said, the session goes on
                log.warning("frame %d: %s", entry.index, e)
                self._say(self.status, f"frame {entry.index}: {e}")

    def _own_embedding(self, entry: Entry):
        own = entry.own
        if own is None or not self.segmenter.backend.embedding_valid(own.embedding):
            self.message = f"encoding frame {entry.index} (frozen) so edits cost the decoder alone"
            self.changed()
            own = entry.own = self.segmenter.encode(entry.frame.image, entry.index)
            self.message = None
        return own

    def _decode_frozen(self, entry: Entry) -> None:
        own = self._own_embedding(entry)
        version = self.objects.version  # after the encode: edits made meanwhile are answered now
        if entry.version == version.number and entry.enc is own:
            return
        frame = entry.frame
        prompts = validate_prompts(list(version.prompts), frame.height, frame.width, warn=False)
        timings: dict = {}
        masks, scores, _ = self.segmenter.decode(own, prompts, timings)
        result = FrameResult(frame=frame, prompts=prompts, masks=masks, scores=scores, reuse=FRESH, embedding=own,
                             lost=[False] * len(prompts), latency_ms=timings, backend=self.segmenter.backend.name,
                             precision=self.segmenter.backend.precision,
                             notes=["decoded on the frozen frame's own embedding"])
        result.measurements = measurements(masks, self.pixel_calibration)
        edited = entry_of(result, version, made="frozen")
        with self._cond:
            entry.masks, entry.record, entry.prompts = edited.masks, edited.record, edited.prompts
            entry.ids, entry.version, entry.seq, entry.enc, entry.made = (version.ids, version.number, version.seq,
                                                                          own, "frozen")
            showing = self.frozen is entry
        if showing:
            self._show(entry)
            self.changed()

    # -- record ----------------------------------------------------------------------------------
    def start_recording(self) -> dict:
        if self.recording is not None:
            raise Refused(f"already recording into {self.recording.out.name}")
        out = recorder.new_folder(self.record_dir)
        backend = self.predictor.backend
        summary = {"model": self.predictor.model_dir.model_id, **backend.describe(), "mode": "real-time (view)",
                   "source": getattr(self.source, "description", "viewer")}
        try:
            extra = [self._dicom_seg(out)] if self._dicom_seg is not None else []
            self.recording = recorder.Recording(out, self.source, summary, self.source.fps, self.pixel_calibration,
                                                extra)
        except InputError as e:
            raise Refused(f"record: {e}") from None
        log.info("recording into %s", out)
        self.changed()
        return {"folder": out.name}

    def stop_recording(self, why: str = "stopped on the page", interrupted: bool = False) -> dict | None:
        rec, self.recording = self.recording, None
        if rec is None:
            return None
        rec.stop(why, interrupted)
        self.last_recording = rec.describe()
        log.info("recording %s ended (%s): complete %s", rec.out, why, self.last_recording.get("complete"))
        self.changed()
        return self.last_recording
