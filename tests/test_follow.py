"""Following the anatomy from frame to frame (runtime.follow): consecutive motions composed
without rounding, corrected by one direct estimate, and a change of gain that is no cut.

Clips are synthetic and move by known amounts (a smooth textured picture with a bright
object, fresh noise on every frame), so the true transform between any two frames is known.
"""

from __future__ import annotations

import cv2
import numpy as np
from moving_clips import moving

from medsam_edge.runtime.follow import MotionChain, refine
from medsam_edge.runtime.motion import Motion, MotionEstimator, identity, prompt_region, region_difference
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.reuse import ReusePolicy, scene_difference
from medsam_edge.runtime.small_frame import SmallFrame

BOX = [110.0, 80.0, 190.0, 160.0]


def centre_error(transform: np.ndarray, shift: np.ndarray) -> float:
    """How far `transform` (later frame -> earlier) puts the box centre from where a pure
    translation by -shift puts it."""
    c = np.array([(BOX[0] + BOX[2]) / 2, (BOX[1] + BOX[3]) / 2, 1.0])
    return float(np.hypot(*((transform @ c)[:2] - (c[:2] - shift))))


def test_slow_motion_adds_up_through_the_chain_and_a_direct_estimate_corrects_it():
    # 0.4 px a frame is 0.2 px of the small frame: each link alone is below what a single
    # estimate would warp for (runtime.motion.NEGLIGIBLE), yet 60 frames move 27 px.
    step = np.array([0.4, 0.2])
    frames = moving(61, tuple(step), rgb=False)
    probes = [SmallFrame.of(f) for f in frames]
    prompts = [Prompt.of(BOX)]
    chain = MotionChain()
    for i, p in enumerate(probes):
        assert chain.step(i, p, prompts) is None
    chained = chain.between(60, 0, 0)
    truth = 60 * step
    still = centre_error(np.eye(3), truth)
    assert still > 25
    assert centre_error(chained, truth) < 0.25 * still  # links kept as fitted, not rounded to nothing
    refined = refine(chain.estimator, probes[0], probes[60], prompts, [chained])[0]
    assert centre_error(refined, truth) < 1.0 and centre_error(refined, truth) <= centre_error(chained, truth)


def test_refine_keeps_the_chain_where_the_pictures_do_not_match():
    a = moving(1, (0, 0), rgb=False)[0]
    b = np.full((240, 320), 25, np.uint8)
    b[100:140] = 200  # nothing of `a` in it
    chained = np.array([[1.0, 0, 3.0], [0, 1.0, -2.0], [0, 0, 1.0]])
    out = refine(MotionChain().estimator, SmallFrame.of(a), SmallFrame.of(b), [Prompt.of(BOX)], [chained])
    assert np.allclose(out[0], chained)
    assert refine(MotionChain().estimator, None, SmallFrame.of(b), [Prompt.of(BOX)], [chained])[0] is chained


def test_a_change_of_gain_is_no_cut_for_the_chain_but_another_picture_is():
    threshold = ReusePolicy().scene_threshold
    gain = [1.0, 1.1]  # an endoscope's auto-exposure between two frames
    a, b = (SmallFrame.of(f) for f in moving(2, (0.5, 0.25), gain=gain, rgb=False))
    assert scene_difference(a, b) > threshold  # as reuse judges it: the embedding's answer would change
    assert scene_difference(a, b, levelled=True) < threshold / 3
    chain = MotionChain(scene_threshold=threshold)
    assert chain.step(0, a, [Prompt.of(BOX)]) is None and chain.step(1, b, [Prompt.of(BOX)]) is None
    dark = np.full((240, 320), 25, np.uint8)
    dark[100:140] = 200  # another view: a bright band on black
    cut = SmallFrame.of(dark)
    assert scene_difference(b, cut, levelled=True) > threshold
    assert "picture changed" in chain.step(2, cut, [Prompt.of(BOX)])


def test_the_closed_form_inverse_is_the_inverse():
    from medsam_edge.runtime.follow import invert

    rng = np.random.default_rng(3)
    for _ in range(50):
        m = np.vstack([rng.normal(size=(2, 3)) * [1, 1, 40], [0.0, 0.0, 1.0]])
        assert np.allclose(invert(m) @ m, np.eye(3), atol=1e-9)


def test_a_small_motion_under_exposure_flicker_is_followed_not_taken_for_none():
    # An endoscope's auto-exposure (+-5 % a frame) and sensor noise outweigh a sub-pixel
    # motion's share of the difference: judged unlevelled, noise decided whether the right
    # motion "explained" anything, and the chain broke (docs/decisions.md).
    rng = np.random.default_rng(5)
    step = np.array([0.6, 0.3])
    gain = list(1.0 + 0.05 * rng.choice([-1.0, 1.0], 41))
    frames = moving(41, tuple(step), gain=gain, rgb=False, noise=6.0)
    prompts = [Prompt.of(BOX)]
    chain = MotionChain()
    assert [chain.step(i, SmallFrame.of(f), prompts) for i, f in enumerate(frames)] == [None] * 41
    truth = 40 * step
    assert centre_error(chain.between(40, 0, 0), truth) < 0.25 * centre_error(np.eye(3), truth)


class Refusing(MotionEstimator):
    """Finds no motion that explains the change, as the flow does under a sliding lung's
    shimmering speckle (lung_Reg_Image_181206_crop: 87 of 299 links), so that the chain's
    own rule for such links is what the pictures decide."""

    def estimate(self, emb, cur, prompts, before=None, keep_small=False, min_inliers=0.5) -> Motion:
        regions = [prompt_region(p, cur.original_hw, self.margin) for p in prompts]
        return Motion([], regions, False, "the motion does not explain the change")


def speckled(n: int, appear_at: int | None = None) -> list[SmallFrame]:
    """A still picture (a bright line over smooth tissue) under strong speckle drawn afresh
    on every frame; from `appear_at` on, a bright disc in the prompt's region."""
    rng = np.random.default_rng(2)
    h, w = 240, 320
    base = cv2.normalize(cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 6), None, 40, 140,
                         cv2.NORM_MINMAX)
    base[100:110] = 200.0
    out = []
    for i in range(n):
        img = base.copy()
        if appear_at is not None and i >= appear_at:
            cv2.circle(img, (150, 125), 20, 230, -1)
        out.append(SmallFrame.of(np.clip(img * rng.gamma(2.0, 0.5, (h, w)), 0, 255).astype(np.uint8)))
    return out


def test_a_link_the_flow_cannot_explain_is_the_identity_where_nothing_changed_beyond_noise():
    line = [Prompt.of([40.0, 90.0, 280.0, 150.0])]
    frames = speckled(12, appear_at=10)
    region = prompt_region(line[0], frames[0].original_hw)
    assert region_difference(frames[0], frames[1], region, identity()) > 0.03  # the speckle alone
    chain = MotionChain(Refusing())
    assert [chain.step(i, s, line) for i, s in enumerate(frames[:10])] == [None] * 10
    assert np.allclose(chain.between(9, 0, 0), np.eye(3))
    why = chain.step(10, frames[10], line)
    assert why is not None and "beyond gain and noise" in why  # the disc came into view
