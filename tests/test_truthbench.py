"""The ground-truth benchmark (issue 24): clips whose truth moves exactly as their path says,
Dice and flicker against that truth, tracking rows, real-time rows and their markdown.
Synthetic images and the tiny model; nothing here needs ../shared."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from medsam_edge.bench.clips import Sweep, make_clip
from medsam_edge.bench.truth import dice_to_truth, flicker, judged


def _picture(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A textured grey picture with a bright ellipse (the "lesion") and its mask."""
    rng = np.random.default_rng(1)
    img = (rng.random((h, w)) * 60 + 40).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (80, 60), (25, 16), 20, 0, 360, 1, -1)
    img[mask > 0] = 200
    return np.dstack([img] * 3), mask.astype(bool)


def _expected_matrix(t: float, sweep: Sweep, w: int, h: int) -> np.ndarray:
    """The sweep's pose written out by hand: rotation by angle (counter-clockwise, image y
    down) and scale about the centre, then the shift."""
    px, py, pa, ps = (2 * math.pi * t / p for p in sweep.periods_s)
    dx, dy = sweep.shift[0] * w * math.sin(px), sweep.shift[1] * h * math.sin(py)
    a = math.radians(sweep.rotate_deg * math.sin(pa))
    s = 1.0 + sweep.zoom * math.sin(ps)
    c, si = s * math.cos(a), s * math.sin(a)
    cx, cy = w / 2, h / 2
    return np.array([[c, si, (1 - c) * cx - si * cy + dx], [-si, c, si * cx + (1 - c) * cy + dy]])


def test_true_masks_move_exactly_as_the_path_says():
    img, mask = _picture()
    h, w = mask.shape
    sweep = Sweep(shift=(0.1, 0.08), rotate_deg=5.0, zoom=0.1, periods_s=(2.0, 3.0, 2.5, 3.5))
    clip = make_clip(img, mask, n_frames=40, fps=10, sweep=sweep, noise="speckle", seed=3)
    assert len(clip.frames) == len(clip.truths) == 40
    assert np.array_equal(clip.truths[0], mask)  # the sweep starts at rest
    for i in (5, 13, 27, 39):
        m = _expected_matrix(i / 10, sweep, w, h)
        want = cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0
        got = clip.truths[i]
        # Same warp: at most rounding at a handful of boundary pixels.
        assert np.count_nonzero(want != got) <= 3, i
        # The mask's centroid goes where the affine sends the first frame's centroid.
        ys, xs = np.nonzero(mask)
        cx, cy = m @ np.array([xs.mean(), ys.mean(), 1.0])
        ys, xs = np.nonzero(got)
        assert abs(xs.mean() - cx) < 1.0 and abs(ys.mean() - cy) < 1.0
    # It does move, and the noise is fresh on every frame.
    assert not np.array_equal(clip.truths[5], clip.truths[0])
    still = make_clip(img, mask, n_frames=3, fps=10, sweep=Sweep.still(), noise="speckle", seed=3)
    assert not np.array_equal(still.frames[1], still.frames[2])


def test_pure_translation_is_an_exact_shift():
    img, mask = _picture()
    sweep = Sweep(shift=(0.05, 0.0), rotate_deg=0.0, zoom=0.0, periods_s=(4.0, 1.0, 1.0, 1.0))
    clip = make_clip(img, mask, n_frames=2, fps=1.0, sweep=sweep, noise="none")
    # t = 1 s is a quarter period: dx = 0.05 * 160 = 8 pixels exactly.
    want = np.zeros_like(mask)
    want[:, 8:] = mask[:, :-8]
    assert np.array_equal(clip.truths[1], want)
    assert np.array_equal(clip.frames[0], img)


def test_perfect_predictor_scores_one_and_static_truth_does_not_flicker():
    img, mask = _picture()
    clip = make_clip(img, mask, n_frames=12, fps=10, noise="gaussian")
    truth = dict(enumerate(clip.truths))
    assert dice_to_truth(truth, lambda i: clip.truths[i]) == [1.0] * 12
    row = judged("perfect", clip, truth, 12, 1.0)
    assert row["dice_mean"] == row["dice_min"] == 1.0
    # Moving truth: only nearest-neighbour rounding is left.
    assert row["flicker_mean"] < 0.02

    still = make_clip(img, mask, n_frames=8, fps=10, sweep=Sweep.still())
    assert flicker(dict(enumerate(still.truths)), still.matrix) == [0.0] * 7
    # A mask that jumps while the anatomy stays put does flicker.
    jumpy = {i: np.roll(m, 6 * (i % 2), axis=1) for i, m in enumerate(still.truths)}
    assert min(flicker(jumpy, still.matrix)) > 0.1


@pytest.fixture()
def data_dir(tmp_path):
    """A ../shared/data look-alike: two annotated 'BUSI' images and a three-frame annotated sequence."""
    img, mask = _picture()
    busi = tmp_path / "ultrasound/busi"
    (busi / "images").mkdir(parents=True)
    (busi / "masks").mkdir(parents=True)
    for k in range(2):
        cv2.imwrite(str(busi / "images" / f"b{k}.png"), img)
        cv2.imwrite(str(busi / "masks" / f"b{k}.png"), mask.astype(np.uint8) * 255)
    seq = tmp_path / "endoscopy/cvc_clinicdb_sequences/seq01"
    (seq / "images").mkdir(parents=True)
    (seq / "masks").mkdir(parents=True)
    for k in range(3):
        shifted = np.roll(img, 3 * k, axis=1), np.roll(mask, 3 * k, axis=1)
        cv2.imwrite(str(seq / "images" / f"frame_{k:03d}.png"), shifted[0])
        cv2.imwrite(str(seq / "masks" / f"frame_{k:03d}.png"), shifted[1].astype(np.uint8) * 255)
    return tmp_path


def test_truth_run_report_and_markdown(tiny_model_dir, data_dir, tmp_path, capsys):
    from medsam_edge.bench import benchmarks_md, truth_md, truth_run

    out = tmp_path / "truth"
    rc = truth_run.main([str(tiny_model_dir.path), "--data", str(data_dir), "--out", str(out), "--backend",
                         "onnxruntime-cpu", "--per-set", "1", "--clip-frames", "6", "--long-frames", "10"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["machine"]["cpu_flags"] is not None and "load_average" in report["machine"]
    assert report["settings"]["every_clip"] is True  # a full run (no --quick) plays every shared clip

    (clip,) = report["truth_clips"]
    modes = [r["mode"] for r in clip["rows"]]
    assert modes == ["fresh every frame", "deterministic reuse", "real-time 30 fps", "real-time 60 fps"]
    fresh = clip["rows"][0]
    assert fresh["answered"] == 6 and fresh["encoded"] == 6 and fresh["dice_gap_to_ceiling"] == 0.0
    for r in clip["rows"][2:]:
        assert 1 <= r["answered"] <= 6 and r["answered"] + r["dropped"] == 6
    (seq,) = report["tracking"]
    assert [r["prompt"] for r in seq["rows"]] == ["track from the first frame's box", "truth box of each frame",
                                                  "previous frame's truth box",
                                                  "previous frame's truth box, carried by the motion"]
    assert all(r["frames"] == 3 for r in seq["rows"])
    rts = report["realtime_rows"]  # no shared videos here: the ground-truth clip at 30 and 60 fps
    assert [r["fps"] for r in rts] == [30.0, 60.0]
    for r in rts:
        assert r["frames"] == 10 and r["answered"] + r["dropped"] == 10
        # Frames captured before the first answer came back are not held against the session.
        assert 0 <= r["answered_after_first_answer"] <= r["frames_after_first_answer"] <= 10
        share = r["answered_share_after_first"]
        assert share is None or share == round(r["answered_after_first_answer"] / r["frames_after_first_answer"], 4)
        assert r["dice_vs_truth_mean"] is not None and len(r["tenths_ms"]) == (10 if r["answered"] >= 10 else 0)

    md = truth_md.render(report)
    assert "CPU flags:" in md and "load average" in md
    assert f"other processes used {report['cpu_used_by_others']:.1%} of the CPU during the run" in md
    assert "| busi:b0 | fresh every frame | 6 / 6 |" in md
    assert f"{fresh['dice_mean']:.4f}" in md
    assert "| seq01 | truth box of each frame | 3 |" in md
    assert "target (issue 24)" in md
    rt30 = clip["rows"][2]  # the target row says which Dice is real time and which the ceiling
    assert (f"real-time 30 fps Dice vs truth within 0.03 of the ceiling | gap {rt30['dice_gap_to_ceiling']:.4f} "
            f"(real time {rt30['dice_mean']:.4f}, ceiling {fresh['dice_mean']:.4f})") in md
    page = benchmarks_md.render([report], "test")
    assert "## Targets of issue 24" in page and "ground truth, tracking and real-time rows" in page


def test_standard_runs_the_truth_step_unless_told_not_to():
    from argparse import Namespace
    from pathlib import Path

    from medsam_edge.bench import standard

    args = Namespace(lite=Path("m"), vitb=None, data=Path("d"), quick=False, repeat=1, out=Path("o"),
                     long_frames=2000, truth=True, every_clip=False)
    steps = dict(standard.scenarios(args))
    assert steps["truth"][:3] == ["-m", "medsam_edge.bench.truth_run", "m"]
    assert "2000" in steps["truth"] and "--quick" not in steps["truth"] and "--every-clip" not in steps["truth"]
    # --quick keeps truth_run's standard three real-time clips unless every clip is asked for.
    args.quick, args.every_clip = True, True
    assert {"--quick", "--every-clip"} <= set(dict(standard.scenarios(args))["truth"])
    args.truth = False
    assert "truth" not in dict(standard.scenarios(args))


def test_answers_read_how_masks_were_made_where_the_runtime_says():
    """answer_of reads the real-time mode's `made`, ages and `why` where a result has them, and
    falls back to reuse kind and staleness where it does not."""
    from dataclasses import dataclass

    from medsam_edge.bench.lockstep import answer_of
    from medsam_edge.runtime.frame import Frame
    from medsam_edge.runtime.result import FrameResult

    mask = np.zeros((1, 8, 10), bool)
    mask[0, 2:5, 3:7] = True
    frame = Frame(image=np.zeros((8, 10, 3), np.uint8), index=7, timestamp=0.2, source="t")
    plain = FrameResult(frame=frame, prompts=[], masks=mask, scores=np.ones(1, np.float32), reuse="newest",
                        staleness=3, lost=[False], latency_ms={"capture_to_mask": 12.5})
    a = answer_of(plain)
    assert np.array_equal(a.mask, mask[0]) and a.capture_to_mask_ms == 12.5 and a.embedding_age_frames == 3
    assert a.made is None or a.made == "fresh"

    @dataclass
    class Later(FrameResult):  # the fields the warping real-time mode adds
        made: str = "warped"
        why: str | None = None
        decode_frame: int = 5
        embedding_ms: float = 100.0
        decode_ms: float = 66.7

    b = answer_of(Later(frame=frame, prompts=[], masks=mask, scores=np.ones(1, np.float32), reuse="newest",
                        staleness=3, lost=[True]))
    assert (b.made, b.decode_age_frames, b.embedding_age_ms, b.decode_age_ms, b.lost) == ("warped", 2, 100.0, 66.7, True)


def test_a_box_is_carried_the_way_the_picture_moved():
    """The tracking bench's carried-box bound moves the previous frame's box by the motion
    found between the frames, in the direction the picture moved (not back)."""
    from medsam_edge.bench.tracking import carry
    from medsam_edge.runtime.motion import MotionEstimator
    from medsam_edge.runtime.small_frame import SmallFrame

    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur((rng.random((240, 320)) * 255).astype(np.uint8), (0, 0), 3)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    before = np.dstack([texture] * 3)
    now = np.roll(before, (4, 10), axis=(0, 1))  # 10 px right, 4 px down
    box = np.array([100, 80, 180, 150], np.float32)
    moved = carry(MotionEstimator(), SmallFrame.of(before), SmallFrame.of(now), box)
    assert np.allclose(moved - box, [10, 4, 10, 4], atol=1.5), moved
    same = carry(MotionEstimator(), SmallFrame.of(before), SmallFrame.of(before), box)
    assert np.array_equal(same, box)
