"""The runtime on its own: preprocessing, postprocessing, prompts, reuse, sessions and streams, Predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_edge.contract import MODELS
from medsam_edge.errors import InputError
from medsam_edge.metrics import dice
from medsam_edge.runtime.postprocess import masks_from_logits
from medsam_edge.runtime.preprocess import preprocess
from medsam_edge.runtime.prompts import Prompt, Prompter, parse_box, parse_point, validate_boxes, validate_prompts
from medsam_edge.runtime.realtime import RealtimeSession
from medsam_edge.runtime.reuse import ReusePolicy
from medsam_edge.runtime.schedule import PromptSchedule
from medsam_edge.runtime.session import Session
from medsam_edge.runtime.sources import ArraySource
from medsam_edge.runtime.stream import Stream
from medsam_edge.runtime.tracker import PromptTracker

from conftest import ECHO_CHAMBER_BOX


def _smooth_logits(n: int, seed: int = 0) -> np.ndarray:
    """Blob-shaped logits like a decoder's: smooth, with a zero crossing inside the square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(60, 190), rng.uniform(60, 190), rng.uniform(20, 60)
        out.append(8.0 * (1 - np.hypot(xx - cx, yy - cy) / r))
    return np.asarray(out, np.float32)[:, None]


@pytest.mark.parametrize("model_id", ["lite_medsam", "medsam_vit_b", "sam_vit_b"])
def test_mask_postprocess_matches_the_reference(model_id, echo_frames):
    from medsam_edge.export.reference import logits_to_masks, prepare

    pre = MODELS[model_id].preprocess
    frame = echo_frames[0]
    p = prepare(frame, pre)
    logits = _smooth_logits(3)
    ours = masks_from_logits(logits, p.original_hw, p.resized_hw, pre)
    ref = logits_to_masks(torch.from_numpy(logits), p, pre)
    assert ours.shape == ref.shape == (3, 240, 320)
    for a, b in zip(ours, ref):
        assert b.sum() > 100 and dice(a, b) > 0.995


def test_lite_preprocess_is_the_reference_call(echo_frames):
    from medsam_edge.export.reference import prepare

    pre = MODELS["lite_medsam"].preprocess
    ours = preprocess(echo_frames[3], pre)
    ref = prepare(echo_frames[3], pre)
    assert ours.resized_hw == ref.resized_hw == (192, 256)
    np.testing.assert_allclose(ours.tensor, ref.tensor.numpy(), atol=1e-6)
    assert ours.tensor[0, :, 192:, :].max() == 0  # padding below the picture


def test_medsam_preprocess_stays_close_to_scikit_image(echo_frames):
    from medsam_edge.export.reference import prepare

    pre = MODELS["medsam_vit_b"].preprocess
    ours = preprocess(echo_frames[0], pre).tensor
    ref = prepare(echo_frames[0], pre).tensor.numpy()
    assert ours.shape == ref.shape == (1, 3, 1024, 1024)
    # OpenCV's cubic vs scikit-image's: same picture, small pixel differences (measured in bench/).
    assert np.abs(ours - ref).mean() < 0.01


def test_box_parsing_and_validation():
    assert parse_box("1, 2,30,40") == [1.0, 2.0, 30.0, 40.0]
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,4,5"):
        with pytest.raises(InputError, match="expected four numbers"):
            parse_box(bad)
    with pytest.raises(InputError, match="not a finite number"):
        validate_boxes([[0, 0, float("nan"), 10]], 100, 100)
    with pytest.raises(InputError, match="inverted"):
        validate_boxes([[50, 10, 20, 40]], 100, 100)
    with pytest.raises(InputError, match="outside the 100x80 image"):
        validate_boxes([[150, 10, 200, 40]], 80, 100)
    clipped = validate_boxes([[-10, 5, 120, 40]], 80, 100)
    np.testing.assert_array_equal(clipped, [[0, 5, 100, 40]])


def test_point_parsing_and_validation():
    assert parse_point("3,4") == ([3.0, 4.0], 1) and parse_point("3, 4, 0") == ([3.0, 4.0], 0)
    for bad, text in (("3", "expected x,y"), ("a,b", "with numbers"), ("1,2,2", "label 2 is not 1")):
        with pytest.raises(InputError, match=text):
            parse_point(bad)
    ok = validate_prompts([Prompt.of(box=[0, 0, 50, 50], points=[[10, 10]], labels=[0])], 80, 100)
    assert ok[0].labels.tolist() == [0] and ok[0].points.tolist() == [[10, 10]]
    for prompt, text in (
        (Prompt.of(points=[[100, 10]]), r"point \[100,10\]: outside the 100x80 image"),
        (Prompt.of(points=[[float("nan"), 10]]), "not a finite number"),
        (Prompt(None, np.array([[5, 5]], np.float32), np.array([2])), "label 2 is not 1"),
        (Prompt.of(box=[0, 0, 50, 50], points=[[1, 1]] * 9), "9 points; at most 8 beside a box"),
        (Prompt(), "neither a box nor a point"),
    ):
        with pytest.raises(InputError, match=text):
            validate_prompts([prompt], 80, 100, "frame 3 prompt")
    with pytest.raises(InputError, match="65 prompts on one frame; at most 64"):
        validate_prompts([Prompt.of(box=[0, 0, 5, 5])] * 65, 80, 100)


def test_prompt_files_hold_until_the_next_frame(tmp_path):
    (tmp_path / "b.json").write_text('{"0": [[1,2,30,40]], "5": [[5,5,50,50],[60,60,90,90]]}')
    (tmp_path / "b.csv").write_text("frame,x0,y0,x1,y1\n0,1,2,30,40\n5,5,5,50,50\n5,60,60,90,90\n")
    (tmp_path / "list.json").write_text('[{"frame": 2, "boxes": [1,2,30,40]}]')
    for name in ("b.json", "b.csv"):
        s = PromptSchedule.from_file(tmp_path / name)
        assert [p.box.tolist() for p in s.prompts_for(3)] == [[1, 2, 30, 40]]
        assert len(s.prompts_for(5)) == 2 and len(s.prompts_for(99)) == 2
    s = PromptSchedule.from_file(tmp_path / "list.json")
    assert len(s.prompts_for(1)) == 0 and len(s.prompts_for(2)) == 1
    # Clicks beside boxes, and clicks alone, in the same file.
    (tmp_path / "p.json").write_text('{"0": [{"box": [1,2,30,40], "points": [[10,10],[20,20]], "labels": [1,0]},'
                                     ' {"points": [[50,50]]}, [5,5,9,9]]}')
    a, b, c = PromptSchedule.from_file(tmp_path / "p.json").prompts_for(0)
    assert a.box.tolist() == [1, 2, 30, 40] and a.labels.tolist() == [1, 0] and a.points.tolist() == [[10, 10], [20, 20]]
    assert b.box is None and b.labels.tolist() == [1] and c.layout == (0, True)
    for text in ("{not json", '{"0": [{"box": [1,2,3]}]}', '{"0": [{"bx": [1,2,3,4]}]}'):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InputError, match="not a prompts file"):
            PromptSchedule.from_file(tmp_path / "bad.json")
    with pytest.raises(InputError, match="not found"):
        PromptSchedule.from_file(tmp_path / "missing.json")


def _disk(h, w, cx, cy, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(xx - cx, yy - cy) <= r


def test_tracker_follows_the_mask_and_reports_loss():
    t = PromptTracker(margin=0.1, min_margin=2)
    t.reset([Prompt.of(box=[10, 10, 50, 50])])
    lost = t.update(_disk(100, 100, 60, 40, 10)[None], np.array([0.9]))
    assert lost == [False]
    x0, y0, x1, y1 = t.current()[0].box
    assert x0 < 50 < 70 < x1 and y0 < 30 < 50 < y1  # grown around the disk at (60, 40)
    before = t.current()[0].box.copy()
    assert t.update(np.zeros((1, 100, 100), bool), np.array([0.9])) == [True]
    np.testing.assert_array_equal(t.current()[0].box, before)  # a lost track keeps its last good box
    assert t.update(_disk(100, 100, 60, 40, 10)[None], np.array([0.05])) == [True]  # score collapsed
    assert t.update(_disk(100, 100, 60, 40, 10)[None], np.array([0.9])) == [False]  # re-acquired
    assert t.update(_disk(100, 100, 60, 40, 25)[None], np.array([0.9])) == [True]  # area jumped 6x
    c = PromptTracker(centroid=True)
    c.reset([Prompt.of(box=[10, 10, 50, 50], points=[[12, 12]])])
    c.update(_disk(100, 100, 60, 40, 10)[None], np.array([0.9]))
    (p,) = c.current()
    assert p.points.tolist() == [[60, 40]] and p.labels.tolist() == [1]  # the user's click gave way to the centroid



def _width_after_filling_its_box(tracker: PromptTracker, frames: int = 10) -> float:
    """The box's width after `frames` masks that each fill the box exactly."""
    tracker.reset([Prompt.of(box=[40, 40, 60, 60])])
    for _ in range(frames):
        x0, y0, x1, y1 = (int(v) for v in tracker.current()[0].box)
        m = np.zeros((1, 100, 100), bool)
        m[0, y0:y1, x0:x1] = True
        tracker.update(m, np.array([0.9]))
    box = tracker.current()[0].box
    assert box[3] - box[1] == pytest.approx(box[2] - box[0])  # a square stays square
    return float(box[2] - box[0])


def test_tracker_box_stays_within_its_growth_cap_and_leads_a_moving_mask():
    # A mask that fills its box: regrown with a margin every frame, the box would grow
    # without bound (and the track be "lost" to area drift); the cap holds it.
    assert _width_after_filling_its_box(PromptTracker(predict=False)) <= 1.3 * 20 + 1e-6
    assert _width_after_filling_its_box(PromptTracker(predict=False, max_growth=None)) > 30
    # Constant velocity: a disk moving +4 px per frame in x gets a box centred ahead of it.
    p = PromptTracker()
    p.reset([Prompt.of(box=[20, 30, 40, 50])])
    for k in range(3):
        p.update(_disk(100, 100, 30 + 4 * k, 40, 8)[None], np.array([0.9]))
    x0, _, x1, _ = p.current()[0].box
    assert (x0 + x1) / 2 > 30 + 4 * 2 + 1


def _moving_frames(n: int, step: float, seed: int = 0) -> np.ndarray:
    """A bright disk on textured dark noise, moving `step` pixels per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 40, (240, 320), dtype=np.uint8)
    frames = []
    for i in range(n):
        img = base.copy()
        img[_disk(240, 320, 100 + step * i, 120, 30)] = 200
        frames.append(np.repeat(img[:, :, None], 3, axis=2))
    return np.asarray(frames)


def _stream(md, frames, reuse, boxes=((60, 80, 140, 160),), track=False):
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    from medsam_edge.runtime.segmenter import Segmenter

    backend = OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder"))
    prompter = Prompter(PromptSchedule.constant(boxes), PromptTracker() if track else None)
    return Stream(Session(Segmenter(backend, md.preprocess), prompter, reuse), ArraySource(frames, fps=30))


def test_a_still_clip_reuses_and_a_moving_clip_re_encodes(tiny_model_dir):
    still = _moving_frames(12, 0.0)
    s = _stream(tiny_model_dir, still, ReusePolicy(exact=False, near=True, max_consecutive=100))
    results = list(s)
    assert [r.reuse for r in results] == ["fresh"] + ["near-repeat"] * 11
    assert [r.staleness for r in results] == list(range(12))
    moving = _moving_frames(6, 12.0)
    s = _stream(tiny_model_dir, moving, ReusePolicy(exact=False, near=True))
    assert all(r.fresh for r in s)
    assert s.stats.summary()["reuse_rate"] == 0.0


def test_near_repeats_compare_with_the_embeddings_own_frame_so_drift_cannot_pile_up():
    """Each frame is a little brighter than the one before (every step under the threshold),
    so comparing with the previous frame would reuse forever; comparing with the frame the
    embedding came from re-encodes once the drift adds up."""
    from medsam_edge.runtime.reuse import EmbeddingCache, thumb_difference, thumbnail
    from medsam_edge.runtime.segmenter import Encoded

    rng = np.random.default_rng(0)
    base = rng.integers(40, 120, (64, 64, 3)).astype(np.int32)
    frames = [np.clip(base + k, 0, 255).astype(np.uint8) for k in range(12)]  # +1 grey level per frame
    policy = ReusePolicy(exact=False, near=True, threshold=3.5 / 255, max_consecutive=100)
    step = thumb_difference(thumbnail(frames[1]), thumbnail(frames[0]))
    assert step < policy.threshold  # any two neighbours look alike
    cache = EmbeddingCache(policy)
    kinds = []
    for k, img in enumerate(frames):
        looked = cache.lookup(img)
        if looked.enc is None:
            cache.store(img, Encoded(None, img.shape[:2], img.shape[:2], k), looked)
        kinds.append(looked.kind)
    # Fresh at 0, reused while within 3.5 levels of frame 0, fresh at 4, and so on.
    assert kinds == ["fresh", "near-repeat", "near-repeat", "near-repeat"] * 3


def test_reuse_cap_and_exact_repeats(tiny_model_dir):
    still = _moving_frames(7, 0.0)
    s = _stream(tiny_model_dir, still, ReusePolicy(exact=False, near=True, max_consecutive=2))
    assert [r.reuse for r in s] == ["fresh", "near-repeat", "near-repeat"] * 2 + ["fresh"]
    # A looping cine: the second pass finds every frame by digest.
    loop = np.concatenate([_moving_frames(3, 15.0)] * 2)
    s = _stream(tiny_model_dir, loop, ReusePolicy(exact=True, near=False))
    kinds = [r.reuse for r in s]
    assert kinds == ["fresh"] * 3 + ["exact-repeat"] * 3
    s = _stream(tiny_model_dir, loop, ReusePolicy.off())
    assert all(r.fresh for r in s)


def test_blank_frames_are_counted_not_segmented(tiny_model_dir):
    frames = _moving_frames(4, 5.0)
    frames[2] = 0
    s = _stream(tiny_model_dir, frames, ReusePolicy.off())
    assert [r.frame.index for r in s] == [0, 1, 3]
    assert s.stats.blank == 1


def test_several_boxes_decode_in_one_call(tiny_model_dir):
    from counting import counting_segmenter

    seg, calls = counting_segmenter(tiny_model_dir)
    prompter = Prompter(PromptSchedule.constant([[10, 10, 60, 60], [100, 100, 200, 200], [5, 5, 300, 230]]), None)
    results = list(Stream(Session(seg, prompter), ArraySource(_moving_frames(2, 5.0))))
    assert calls == [3, 3]
    assert all(r.masks.shape == (3, 240, 320) and r.scores.shape == (3,) for r in results)


def test_realtime_answers_every_frame_with_the_newest_embedding(tiny_model_dir):
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    from medsam_edge.runtime.segmenter import Segmenter

    md = tiny_model_dir
    seg = Segmenter(OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder")), md.preprocess)
    frames = _moving_frames(40, 2.0)
    prompter = Prompter(PromptSchedule.constant([[60, 80, 140, 160]]), None)
    # 400 fps is far faster than this encoder: it must skip frames, the decoder must not queue.
    rt = Stream(RealtimeSession(seg, prompter, queue_size=2), ArraySource(frames, fps=400), pace=True)
    results = list(rt)
    assert len(results) + rt.stats.dropped + rt.stats.passed + rt.stats.blank == 40
    assert rt.stats.encoded < 40  # the encoder skipped frames
    assert {r.reuse for r in results} <= {"fresh", "newest", "near-repeat"}
    assert {r.made for r in results} <= {"fresh", "decoded", "warped"}
    assert [r.frame.index for r in results] == sorted(r.frame.index for r in results)
    assert all("capture_to_mask" in r.latency_ms for r in results)


def test_realtime_predictor_gives_encoder_and_decoder_their_own_threads(tiny_model_dir):
    from medsam_edge.runtime.predictor import Predictor
    from medsam_edge.runtime.realtime import split_threads

    assert split_threads(8) == (8, 1) and split_threads(2) == (2, 1) and split_threads(1) == (1, 1)
    assert split_threads(None, cores=4) == (4, 1)
    live = Predictor(tiny_model_dir.path, backend="onnxruntime-cpu", threads=3, realtime=True)
    plain = Predictor(tiny_model_dir.path, backend="onnxruntime-cpu", threads=3)
    try:
        sessions = lambda b: [s.get_session_options().intra_op_num_threads for s in (b.encoder, b.decoder)]  # noqa: E731
        assert sessions(live.backend) == [3, 1]
        assert sessions(plain.backend) == [3, 3]
        assert live.backend.describe()["threads"] == {"encoder": 3, "decoder": 1}
        # Asking the plain predictor for a real-time session splits its threads: said once, not twice.
        plain.session(prompts=[[1, 1, 9, 9]], realtime=True).close()
        assert sessions(plain.backend) == [3, 1]
        plain.set_image(np.zeros((8, 8), np.uint8) + 9)
        assert sessions(plain.backend) == [3, 3]
    finally:
        live.close()
        plain.close()


def test_predictor_on_a_real_echo_frame_matches_the_reference(lite_model_dir, echo_frames):
    from medsam_edge.export.models import build_model
    from medsam_edge.export.checkpoint import bundled_lite_checkpoint, load_weights
    from medsam_edge.export.reference import ReferencePredictor
    from medsam_edge.runtime import Predictor

    p = Predictor(lite_model_dir.path, backend="onnxruntime-cpu")
    with pytest.raises(InputError, match="set_image"):
        p.predict([ECHO_CHAMBER_BOX])
    sam = build_model("lite_medsam")
    load_weights(sam, bundled_lite_checkpoint(), "lite_medsam")
    ref = ReferencePredictor(sam, lite_model_dir.preprocess)
    x0, y0, x1, y1 = ECHO_CHAMBER_BOX
    for frame in echo_frames[[0, 15]]:
        p.set_image(frame)
        masks, scores = p.predict([ECHO_CHAMBER_BOX])
        ref.set_image(frame)
        ref_masks, _ = ref.predict(np.array([ECHO_CHAMBER_BOX]))
        m = masks[0]
        inside = m[int(y0):int(y1), int(x0):int(x1)].sum()
        assert 0.2 * (x1 - x0) * (y1 - y0) < m.sum() < 0.95 * (x1 - x0) * (y1 - y0)
        assert inside >= 0.98 * m.sum()  # the mask lies inside its box
        assert dice(m, ref_masks[0]) > 0.99
    p.close()
