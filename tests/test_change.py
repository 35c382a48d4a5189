"""Change beyond motion, gain and noise (runtime.change), and the reuse it allows.

Clips are synthetic and move by known amounts (tests/moving_clips.py), with ultrasound-like
speckle drawn afresh on every frame, so what is the same anatomy and what is a change is
known: the plain difference cannot tell them apart, the change measure must.
"""

from __future__ import annotations

import cv2
import numpy as np
from moving_clips import moving

from medsam_edge.runtime.change import noise_std, region_change
from medsam_edge.runtime.motion import identity, prompt_region, region_difference
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.result import FRESH, NEAR
from medsam_edge.runtime.reuse import EmbeddingCache, ReusePolicy
from medsam_edge.runtime.segmenter import Encoded
from medsam_edge.runtime.small_frame import SmallFrame

BOX = [110.0, 80.0, 190.0, 160.0]
THRESHOLD = ReusePolicy().threshold


def speckled(frames: np.ndarray, seed: int = 1, looks: float = 6.0) -> np.ndarray:
    """Multiplicative speckle (gamma, mean 1), fresh on every frame, as in bench.clips."""
    rng = np.random.default_rng(seed)
    x = frames.astype(np.float32) * rng.gamma(looks, 1.0 / looks, frames.shape[:3])[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def judged(a: np.ndarray, b: np.ndarray, matrix=None) -> tuple[float, float]:
    """(plain difference, change) of frame b against frame a where BOX is."""
    ea, eb = SmallFrame.of(a), SmallFrame.of(b)
    region = prompt_region(Prompt.of(BOX), b.shape[:2])
    m = identity() if matrix is None else matrix
    return region_difference(ea, eb, region, m), region_change(ea, eb, region, m)


def test_fresh_speckle_on_the_same_picture_is_no_change_but_a_small_object_is():
    still = speckled(moving(3, (0.0, 0.0)))
    plain, change = judged(still[0], still[1])
    assert plain > 3 * THRESHOLD  # the plain difference sees the noise...
    assert change <= THRESHOLD / 2  # ...the change measure does not
    blob = still[2].copy()
    cv2.circle(blob, (112, 84), 8, (230, 230, 230), -1)  # 16 px across, in the box's corner
    _, appeared = judged(still[0], blob)
    assert appeared > THRESHOLD


def test_motion_is_judged_after_compensation():
    step = (3.0, 1.5)
    frames = speckled(moving(2, step))
    # The transform maps a point of the later frame to the earlier one.
    back = np.array([[1.0, 0.0, -step[0]], [0.0, 1.0, -step[1]]])
    _, unmoved = judged(frames[0], frames[1])
    _, moved = judged(frames[0], frames[1], back)
    assert unmoved > THRESHOLD >= moved


def test_a_small_gain_change_is_levelled_a_large_one_is_a_change():
    for gain, changed in ((1.05, False), (1.4, True)):
        frames = moving(2, (0.0, 0.0), gain=[1.0, gain])
        _, change = judged(frames[0], frames[1])
        assert (change > THRESHOLD) is changed, (gain, change)


def test_the_noise_estimate_reads_white_noise_and_not_smooth_change():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 5.0, (32, 32)).astype(np.float32)
    ramp = np.add.outer(np.arange(32.0), np.arange(32.0)).astype(np.float32) * 3
    assert abs(noise_std(noise) - 5.0) < 0.5
    assert noise_std(ramp) < 0.01
    assert abs(noise_std(noise + ramp) - 5.0) < 0.5


def test_a_speckled_probe_sweep_reuses_with_compensation_and_not_without():
    """Deterministic reuse on a moving, speckled picture: the default policy reuses most
    frames (at most max_consecutive in a row), the plain difference none; a change inside
    the box still forces a fresh embedding."""
    frames = list(speckled(moving(13, (1.0, 0.5))))
    blob = frames[-1].copy()
    cv2.circle(blob, (125, 90), 8, (230, 230, 230), -1)  # where the first test puts it, moved along
    frames.append(blob)

    def kinds(policy: ReusePolicy) -> list[str]:
        cache = EmbeddingCache(policy)
        out = []
        for k, img in enumerate(frames):
            # The box follows the picture, as the tracker's does.
            looked = cache.lookup(img, [Prompt.of(np.add(BOX, [k, k / 2, k, k / 2]))])
            if looked.enc is None:
                cache.store(img, Encoded(None, img.shape[:2], img.shape[:2], k), looked)
            out.append(looked.kind)
        return out

    policy = ReusePolicy(exact=False)
    on = kinds(policy)
    off = kinds(ReusePolicy(exact=False, motion=False))
    assert on[:13] == ([FRESH] + [NEAR] * policy.max_consecutive) * 3 + [FRESH], on
    assert on[13] == FRESH  # the object that appeared (after a fresh frame: judged on its own)
    assert off == [FRESH] * len(frames), off
