"""Following the anatomy from frame to frame (runtime.follow): consecutive motions composed
without rounding, corrected by one direct estimate, and a change of gain that is no cut.

Clips are synthetic and move by known amounts (a smooth textured picture with a bright
object, fresh noise on every frame), so the true transform between any two frames is known.
"""

from __future__ import annotations

import numpy as np
from moving_clips import moving

from medsam_edge.runtime.follow import MotionChain, refine
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
