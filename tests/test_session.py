"""The push API (sessions), the pull API (streams), the public names, and embedding lifetime."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from medsam_edge.engines.base import ExpiredEmbedding
from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
from medsam_edge.errors import InputError
from medsam_edge.metrics import dice
from medsam_edge.runtime.prompts import Prompter
from medsam_edge.runtime.realtime import RealtimeSession
from medsam_edge.runtime.reuse import ReusePolicy
from medsam_edge.runtime.schedule import PromptSchedule
from medsam_edge.runtime.segmenter import Segmenter
from medsam_edge.runtime.session import Session
from medsam_edge.runtime.sources import ArraySource
from medsam_edge.runtime.stream import Stream
from medsam_edge.runtime.tracker import PromptTracker

from conftest import ECHO_CHAMBER_BOX

BOX_A = [60.0, 80.0, 140.0, 160.0]
BOX_B = [150.0, 40.0, 230.0, 120.0]


def _frames(n: int, step: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 40, (240, 320), dtype=np.uint8)
    yy, xx = np.mgrid[0:240, 0:320]
    out = []
    for i in range(n):
        img = base.copy()
        img[np.hypot(xx - 100 - step * i, yy - 120) <= 30] = 200
        out.append(np.repeat(img[:, :, None], 3, axis=2))
    return np.asarray(out)


class SlotBackend(OnnxruntimeBackend):
    """onnxruntime with `slots` embeddings at a time, reused in turn like a GPU's device buffers:
    an old handle really expires, and decode refuses it. Every decode records the generation
    it read, so a test can prove none was expired."""

    def __init__(self, md, slots: int, gate: threading.Event | None = None, fail_on: int | None = None) -> None:
        super().__init__(md.onnx("encoder"), md.onnx("decoder"), threads=1)
        self.embedding_slots = slots
        self._ring: list = [None] * slots
        self._generation = 0
        self.gate, self.fail_on = gate, fail_on
        self.decoded: list[int] = []
        self.refused = 0
        self._lock = threading.Lock()

    def encode(self, image):
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.fail_on is not None and self._generation == self.fail_on:
            raise RuntimeError("encoder exploded")
        emb = super().encode(image)
        with self._lock:
            g = self._generation
            self._generation += 1
            self._ring[g % self.embedding_slots] = (g, emb)
        return ("slot", g)

    def embedding_valid(self, handle) -> bool:
        g = handle[1]
        held = self._ring[g % self.embedding_slots]
        return held is not None and held[0] == g

    def decode(self, handle, coords, labels):
        with self._lock:
            if not self.embedding_valid(handle):
                self.refused += 1
                raise ExpiredEmbedding(f"generation {handle[1]} expired")
            emb = self._ring[handle[1] % self.embedding_slots][1]
            self.decoded.append(handle[1])
        return super().decode(emb, coords, labels)

    def embedding_to_numpy(self, handle):
        return self._ring[handle[1] % self.embedding_slots][1]


def _segmenter(md, backend=None) -> Segmenter:
    return Segmenter(backend or OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder")), md.preprocess)


def test_public_names_are_exported():
    """The documented API, pinned: each name imports from medsam_edge.runtime and is the object
    its own submodule defines (the lazy table points at the right module), nothing more."""
    import importlib

    import medsam_edge.runtime as rt

    public = {"Predictor", "Session", "RealtimeSession", "Stream", "FrameResult", "Frame", "Prompt",
              "PromptSchedule", "PromptTracker", "ReusePolicy", "open_source", "Source", "ArraySource"}
    assert set(rt.__all__) == public and set(dir(rt)) >= public
    for name in sorted(public):
        obj = getattr(importlib.import_module("medsam_edge.runtime"), name)
        assert obj.__name__ == name, name
        home = importlib.import_module(obj.__module__)
        assert obj.__module__.startswith("medsam_edge.runtime.") and getattr(home, name) is obj, name
    with pytest.raises(AttributeError):
        rt.NoSuchThing  # noqa: B018


def test_prompts_changed_mid_stream_take_effect_at_the_next_frame(tiny_model_dir):
    seg = _segmenter(tiny_model_dir)
    session = Session(seg, Prompter(PromptSchedule.constant([BOX_A]), None), ReusePolicy.off())
    frames = _frames(3)
    r0 = session.process(frames[0])
    session.set_prompts([BOX_B, BOX_A])
    r1 = session.process(frames[1])
    r2 = session.process(frames[2])
    assert [p.box.tolist() for p in r0.prompts] == [BOX_A]
    assert [p.box.tolist() for p in r1.prompts] == [BOX_B, BOX_A] == [p.box.tolist() for p in r2.prompts]
    assert r1.masks.shape[0] == 2 and r0.frame.index == 0 and r2.frame.index == 2
    # A tracker restarts from the new prompts (whatever it had propagated to).
    tracked = Session(seg, Prompter(PromptSchedule.constant([BOX_A]), PromptTracker(min_score=0.0)),
                      ReusePolicy.off())
    tracked.process(frames[0])
    tracked.set_prompts([BOX_B])
    assert [p.box.tolist() for p in tracked.process(frames[1]).prompts] == [BOX_B]
    with pytest.raises(InputError, match="outside the 320x240 image"):
        session.set_prompts([[400, 400, 500, 500]])
        session.process(frames[0])


def test_realtime_submit_never_blocks_and_counts_what_it_drops(tiny_model_dir):
    gate = threading.Event()
    backend = SlotBackend(tiny_model_dir, slots=3, gate=gate)
    session = RealtimeSession(_segmenter(tiny_model_dir, backend), Prompter(PromptSchedule.constant([BOX_A]), None),
                              queue_size=2)
    frames = _frames(10, step=3.0)
    submitter = threading.Thread(target=lambda: [session.submit(f) for f in frames])
    submitter.start()
    submitter.join(timeout=20)  # the encoder is held at its gate: a blocking submit would hang here
    assert not submitter.is_alive()
    assert session.stats.dropped == 8  # two wait; the eight older ones were dropped, and counted
    gate.set()
    # The encoder takes the newest frame taken up (8), not one still waiting (9), which a
    # newer one could drop: the motion chain then reaches every embedding.
    results = [session.next_result(timeout=60), session.next_result(timeout=60)]
    assert [r.frame.index for r in results] == [8, 9] and session.stats.passed == 0
    assert {r.embedding_frame for r in results} == {8} and results[0].made == "fresh"
    # The box stays where it is while the picture moves 3 px: in frame 9 it lies elsewhere on
    # the anatomy than frame 8's box did, beyond the tolerance. Frame 9 is answered at once,
    # warped, while a decode for its box runs beside; the frame after it is answered from that.
    assert results[1].made == "warped" and results[1].decode_frame == 8
    deadline = time.monotonic() + 60
    while session.answerer.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    session.submit(frames[-1])
    third = session.next_result(timeout=60)
    assert third.made == "warped" and third.decode_frame == 9 and session.stats.decoded_beside == 1
    session.close()


def test_an_error_in_the_encoder_thread_surfaces_in_the_caller(tiny_model_dir):
    backend = SlotBackend(tiny_model_dir, slots=3, fail_on=0)
    session = RealtimeSession(_segmenter(tiny_model_dir, backend), Prompter(PromptSchedule.constant([BOX_A]), None))
    session.submit(_frames(1)[0])
    with pytest.raises(RuntimeError, match="encoder exploded"):
        session.next_result(timeout=60)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        session.submit(_frames(1)[0])
    session.close()


def test_realtime_callback_delivers_results_in_order(tiny_model_dir):
    got = []
    done = threading.Event()

    def on_result(r):
        got.append(r.frame.index)
        if len(got) == 3:
            done.set()

    session = RealtimeSession(_segmenter(tiny_model_dir), Prompter(PromptSchedule.constant([BOX_A]), None),
                              on_result=on_result, queue_size=8)
    for f in _frames(3):
        session.submit(f)
    assert done.wait(timeout=60)
    assert got == [0, 1, 2] and session.latest().frame.index == 2
    session.close()


def test_neither_the_cache_nor_realtime_mode_uses_an_expired_embedding(tiny_model_dir):
    loop = np.concatenate([_frames(3, step=15.0)] * 3)  # a looping cine: every later frame is an exact repeat
    for slots, expect_hits in ((2, 0), (4, 6)):
        backend = SlotBackend(tiny_model_dir, slots=slots)
        session = Session(_segmenter(tiny_model_dir, backend), Prompter(PromptSchedule.constant([BOX_A]), None),
                          ReusePolicy(near=False))
        results = list(Stream(session, ArraySource(loop)))
        kinds = [r.reuse for r in results]
        assert kinds.count("exact-repeat") == expect_hits, (slots, kinds)
        assert backend.refused == 0 and session.stats.reencoded == 0  # nothing expired was ever handed out
        assert session.cache.capacity == slots - 1
    # Real-time mode with two slots: the encoder keeps overwriting; the decoder never reads an old one.
    backend = SlotBackend(tiny_model_dir, slots=2)
    session = RealtimeSession(_segmenter(tiny_model_dir, backend), Prompter(PromptSchedule.constant([BOX_A]), None))
    results = list(Stream(session, ArraySource(_frames(30, step=2.0), fps=200), pace=True))
    assert results and all(r.masks.shape[0] == 1 for r in results)
    decoded = [r for r in results if r.made != "warped"]  # a warped answer reads no embedding
    assert len(backend.decoded) >= len(decoded) >= 1 and session.stats.reencoded == backend.refused


class RestartingServer(SlotBackend):
    """Like a server that restarted: it cannot tell in advance that a handle died
    (embedding_valid says yes), and decode refuses handles from before the restart."""

    restarted_at = -1

    def embedding_valid(self, handle) -> bool:
        return True

    def decode(self, handle, coords, labels):
        if handle[1] < self.restarted_at:
            self.refused += 1
            raise ExpiredEmbedding("the server restarted")
        return super().decode(handle, coords, labels)


def test_an_embedding_that_expired_unannounced_is_encoded_again_and_the_record_says_so(tiny_model_dir):
    backend = RestartingServer(tiny_model_dir, slots=8)
    session = Session(_segmenter(tiny_model_dir, backend), Prompter(PromptSchedule.constant([BOX_A]), None),
                      ReusePolicy(exact=True, near=False))
    frame = _frames(1)[0]
    assert session.process(frame).fresh
    assert session.process(frame).reuse == "exact-repeat"
    backend.restarted_at = backend._generation
    r = session.process(frame)  # the cache hands out the old handle; the server refuses it
    assert r.fresh and r.notes == ["re-encoded: the embedding had expired"] and r.masks.shape[0] == 1
    assert backend.refused == 1 and session.stats.reencoded == 1
    assert json.loads(json.dumps(r.record()))["notes"] == r.notes
    assert session.process(frame).reuse == "exact-repeat"  # the new embedding went into the cache


def test_bgr_input_equals_rgb_after_conversion_and_rgba_drops_alpha(tiny_model_dir, echo_frames):
    from medsam_edge.runtime import Predictor

    p = Predictor(tiny_model_dir.path, backend="onnxruntime-cpu")
    rgb = echo_frames[4]
    p.set_image(rgb)
    want, _ = p.predict(boxes=[ECHO_CHAMBER_BOX])
    p.set_image(np.ascontiguousarray(rgb[:, :, ::-1]), image_format="BGR")
    got, _ = p.predict(boxes=[ECHO_CHAMBER_BOX])
    np.testing.assert_array_equal(got, want)
    p.set_image(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), image_format="RGBA")
    np.testing.assert_array_equal(p.predict(boxes=[ECHO_CHAMBER_BOX])[0], want)
    p.set_image(rgb[:, :, :1])  # HxWx1 is grey, as HxW is
    for bad, text in ((rgb.astype(np.float32), "dtype float32: expected uint8; scale floats"),
                      (rgb > 0, "dtype bool: expected uint8"), (rgb[:, :, :2], "expected HxW, HxWx1")):
        with pytest.raises(InputError, match=text):
            p.set_image(bad)
    with pytest.raises(InputError, match="image_format 'YUV'"):
        p.set_image(rgb, image_format="YUV")
    p.close()


def test_predict_with_clicks_and_logits(lite_model_dir, echo_frames, caplog):
    from medsam_edge.runtime import Predictor

    p = Predictor(lite_model_dir.path, backend="onnxruntime-cpu")
    p.set_image(echo_frames[0])
    x0, y0, x1, y1 = ECHO_CHAMBER_BOX
    box_only, s0, logits = p.predict(boxes=[ECHO_CHAMBER_BOX], return_logits=True)
    assert logits.shape == (1, 1, 256, 256) and logits.dtype == np.float32
    assert ((logits[0, 0] > 0).sum() > 0) and s0.shape == (1,)
    # A negative click inside the mask removes part of it; the decoder did not ignore it.
    ys, xs = np.nonzero(box_only[0])
    neg, _ = p.predict(boxes=[ECHO_CHAMBER_BOX], points=[[xs.mean(), ys.mean()]], labels=[0])
    assert neg[0].sum() < box_only[0].sum()
    with caplog.at_level("WARNING"):
        p.predict(points=[[(x0 + x1) / 2, (y0 + y1) / 2]])
    assert "trained on box prompts" in caplog.text
    with pytest.raises(InputError, match="points with several boxes"):
        p.predict(boxes=[ECHO_CHAMBER_BOX, ECHO_CHAMBER_BOX], points=[[10, 10]])
    with pytest.raises(InputError, match="label 3 is not 1"):
        p.predict(boxes=[ECHO_CHAMBER_BOX], points=[[10, 10]], labels=[3])
    p.close()


def test_predictor_stream_with_a_prompts_file_and_tracking_closes_its_source(lite_model_dir, echo_frames,
                                                                            tmp_path):
    from medsam_edge.runtime import Predictor
    from medsam_edge.runtime.sources import ArraySource

    chamber, other = list(ECHO_CHAMBER_BOX), [125.0, 128.0, 200.0, 170.0]
    (tmp_path / "p.json").write_text(json.dumps({"0": [chamber], "3": [{"box": other, "points": [[160, 150]]}]}))
    p = Predictor(lite_model_dir.path, backend="onnxruntime-cpu")
    src = ArraySource(echo_frames[:6], fps=10)
    results = list(p.stream(src, prompts_file=tmp_path / "p.json", track=True))
    assert len(results) == 6 and not src.closed  # a source the caller opened stays the caller's
    assert results[0].prompts[0].box.tolist() == chamber and results[1].prompts[0].box.tolist() != chamber
    assert results[1].lost == [False]
    assert results[3].prompts[0].box.tolist() == other  # the file's frame 3 overrides propagation
    assert results[3].prompts[0].points.tolist() == [[160, 150]]
    assert results[4].prompts[0].box.tolist() != other  # and propagation goes on from there
    stream = p.stream("pydicom:examples_ybr_color.dcm", prompts=[chamber], max_frames=3)
    assert [r.frame.index for r in stream] == [0, 1, 2] and stream.source.closed
    p.close()


class LiveArray(ArraySource):
    """A live source: frames come at its rate, as a probe delivers them (not all at once).
    Once `stall` is set, a read takes a second (a probe that stops delivering)."""

    is_live = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.stall = threading.Event()

    def __iter__(self):
        for frame in super().__iter__():
            if self.stall.wait(1.0 / self.fps):  # set during this read: it lasts a second more
                time.sleep(1.0)
            yield frame


def test_a_live_source_streams_in_real_time_and_early_exit_stops_everything(tiny_model_dir):
    from medsam_edge.runtime import Predictor

    before = set(threading.enumerate())  # a failed test before this one may have left its own
    p = Predictor(tiny_model_dir.path, backend="onnxruntime-cpu")
    src = LiveArray(_frames(200, step=1.0), fps=100)
    stream = p.stream(src, prompts=[BOX_A])
    assert stream.session.realtime and not stream.pace
    got = []
    for r in stream:
        got.append(r)
        if len(got) == 3:
            src.stall.set()  # the capture thread is inside a read when the loop stops
            break
    assert len(got) == 3 and stream.ended_early
    stream.close()
    assert src.closed is False  # the caller's source; but the session's threads are gone
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("medsam-")]
    p.close()


def test_refine_adds_the_mask_centroid_as_a_click(lite_model_dir, echo_frames):
    from medsam_edge.runtime import Predictor

    p = Predictor(lite_model_dir.path, backend="onnxruntime-cpu")
    with p.session(prompts=[ECHO_CHAMBER_BOX], refine=True, reuse="off") as s:
        r = s.process(echo_frames[0])
    assert r.refined == [True] and len(r.prompts[0].points) == 1 and r.prompts[0].labels.tolist() == [1]
    p.set_image(echo_frames[0])
    plain, _ = p.predict(boxes=[ECHO_CHAMBER_BOX])
    again, _ = p.predict(prompts=r.prompts)
    np.testing.assert_array_equal(again, r.masks)  # the record's prompt reproduces the refined mask
    assert 0.5 < dice(plain[0], r.masks[0]) < 1.0
    assert json.loads(json.dumps(r.record()))["refined"] == [True]
    p.close()
