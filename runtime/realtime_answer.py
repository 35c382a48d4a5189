"""Answering real-time frames at the capture rate: decode once per (embedding, prompts in
the embedding's frame), warp those logits to every frame after it (runtime.realtime has
the threads; this is what its answering thread does with each frame).

For each frame: take() finds its prompts and follows it from the frame before (the motion
chain, runtime.follow); answer() then warps the last decoder answer to it when that still
fits (same embedding, same prompts version, the prompts mapped into the embedding's frame
within PROMPT_TOLERANCE of where they were decoded, the motion known), and otherwise runs
the decoder on the newest embedding the frame can reach (or, failing that, the kept one
the reuse cache judges closest), saying why. None: no embedding it can reach yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from medsam_edge.engines.base import ExpiredEmbedding
from medsam_edge.runtime.follow import EYE, MotionChain, as_motion, homogeneous, moved_share
from medsam_edge.runtime.frame import Frame
from medsam_edge.runtime.motion import MotionEstimator, prompt_region
from medsam_edge.runtime.prompts import Prompt, Prompter
from medsam_edge.runtime.result import DECODED, FRESH, NEAR, NEWEST, WARPED, FrameResult
from medsam_edge.runtime.reuse import EmbeddingCache, Kept
from medsam_edge.runtime.segmenter import Encoded, Segmenter
from medsam_edge.runtime.session import Stats
from medsam_edge.runtime.small_frame import SmallFrame
from medsam_edge.runtime.tracker import centroid_click

# A prompt mapped into the embedding's frame may move this share of its box's longer side
# from where it was decoded before the decoder runs again (docs/decisions.md: a box moved
# 1 % of its size changes LiteMedSAM's mask by Dice 0.98 on average, 2 % by 0.955).
PROMPT_TOLERANCE = 0.01



@dataclass
class Decoded:
    """One decoder call's answer, warped to every frame that follows until replaced.

    kept: the embedding (and its frame's probe); version: the prompts version decoded;
    mapped: the prompts as decoded, in the embedding's frame; logits (N, 1, 256, 256),
    scores, refined: the decoder's answer there. frame / timestamp: the frame that asked
    for it. ref / ref_to_emb: a frame of the motion chain and, per prompt, the transform
    from it to the embedding's frame (the chain carries later frames to `ref`).
    """

    kept: Kept
    version: int
    mapped: list[Prompt]
    logits: np.ndarray
    scores: np.ndarray
    refined: list[bool]
    frame: int
    timestamp: float
    ref: int
    ref_to_emb: list[np.ndarray]
    newest: Kept | None = None  # the newest embedding when it was decoded: a newer one means decode again



@dataclass
class Taken:
    """A frame taken from the queue, followed, with the prompts it is answered for."""

    frame: Frame
    prompts: list[Prompt]
    version: int
    probe: SmallFrame | None
    timings: dict
    broken: str | None = None  # why the motion chain broke at this frame



class RealtimeAnswerer:
    """One real-time session's answering side (one thread). motion False: every frame is
    decoded on the newest embedding as it is, nothing warped. gap: frames apart an
    embedding's frame may be from the answered one for a direct motion estimate (a frame
    not in the chain: passed over, or ahead)."""

    def __init__(self, segmenter: Segmenter, prompter: Prompter, cache: EmbeddingCache, stats: Stats,
                 motion: bool = True, refine: bool = False, keep_logits: bool = False, gap: int = 3) -> None:
        self.segmenter, self.prompter, self.cache, self.stats = segmenter, prompter, cache, stats
        self.motion, self.refine, self.keep_logits, self.gap = motion, refine, keep_logits, gap
        self.chain = MotionChain(MotionEstimator(), cache.policy.scene_threshold) if motion else None
        self._decoded: Decoded | None = None
        self._broken: str | None = None  # why the last decode's frames went out of reach, until the next

    def blank(self) -> None:
        if self.chain is not None:
            self.chain.blank()

    def take(self, frame: Frame) -> Taken:
        """The frame's prompts, and its link in the motion chain."""
        prompts = self.prompter.prompts_for(frame)
        taken = Taken(frame, prompts, self.prompter.version, None, {})
        if self.chain is not None:
            t0 = time.perf_counter()
            taken.probe = SmallFrame.of(frame.image)
            taken.broken = self.chain.step(frame.index, taken.probe, prompts)
            taken.timings["motion"] = (time.perf_counter() - t0) * 1e3
            if taken.broken is not None:
                self._decoded = None  # its frame is out of reach now
                self._broken = f"frame {frame.index}: {taken.broken}"
        return taken

    def _reach(self, kept: Kept, t: Taken) -> list[np.ndarray] | None:
        """Per prompt, the transform from this frame to the kept embedding's frame, or None."""
        n, e, index = len(t.prompts), kept.enc.frame_index, t.frame.index
        if e == index:
            return [EYE] * n
        if self.chain is None:
            return None
        if self.chain.reaches(e):
            chained = [self.chain.between(index, k, e) for k in range(n)]
            if all(a is not None for a in chained):
                return chained
        if abs(e - index) <= self.gap and t.probe is not None:
            # Not in the chain (a frame passed over, or one ahead of this): the gap is a
            # frame or two, which a direct estimate follows.
            m = self.chain.estimator.estimate(kept.probe, t.probe, t.prompts)
            if m.applied:
                return [homogeneous(p.matrix) for p in m.prompts]
        return None

    def _to_decoded(self, d: Decoded, t: Taken) -> list[np.ndarray] | None:
        if len(d.ref_to_emb) != len(t.prompts):
            return None
        chained = [self.chain.between(t.frame.index, k, d.ref) for k in range(len(t.prompts))]
        if any(a is None for a in chained):
            return None
        return [r @ a for r, a in zip(d.ref_to_emb, chained)]

    def answer(self, t: Taken) -> FrameResult | None:
        """The frame's answer, or None where no embedding it can reach is there yet."""
        hw = t.frame.image.shape[:2]
        newest = self.cache.newest(hw)
        if not self.motion:
            return None if newest is None else self._decode(t, newest, newest, [EYE] * len(t.prompts), None)
        d, why, fallback = self._decoded, t.broken, None
        landed = newest is not None and (d is None or newest is not d.newest)
        reach_newest = self._reach(newest, t) if landed else None
        if d is not None and why is None:
            to_d = self._to_decoded(d, t)
            if d.version != t.version or len(d.mapped) != len(t.prompts):
                why = f"the prompts changed (version {t.version})"
            elif to_d is None:
                why = "the motion to the decoded frame is not known"
            elif reach_newest is not None:
                why = f"a new embedding (frame {newest.enc.frame_index})"
            else:
                motion = as_motion(to_d, [])
                mapped = motion.map_prompts(t.prompts, hw) if not motion.still else t.prompts
                share = max((moved_share(a, b, hw) for a, b in zip(d.mapped, mapped)), default=0.0)
                if share <= PROMPT_TOLERANCE:
                    return self._result(t, d, to_d, None)
                why = f"the prompts moved {share:.1%} of their size in the embedding's frame"
                if self.segmenter.backend.embedding_valid(d.kept.enc.embedding):
                    fallback = (d.kept, to_d)
        elif d is None and why is None:
            why = self._broken or "the first answer"
        # The kept embedding whose frame is closest where the prompts are (the reuse cache's
        # judgement: a heartbeat's phase, a view come back), else the newest it reaches.
        candidates = []
        kept = self.cache.kept(hw)
        if t.probe is not None and t.prompts and kept:
            choice = self.cache.choose(t.probe, t.prompts, kept, follow=True)
            if choice.kept is not None and choice.motion is not None:
                candidates.append((choice.kept, [homogeneous(p.matrix) for p in choice.motion.prompts]))
        if newest is not None:
            candidates.append((newest, reach_newest if landed else self._reach(newest, t)))
        if fallback is not None:
            candidates.append(fallback)
        for chosen, to_emb in candidates:
            if to_emb is not None:
                result = self._decode(t, chosen, newest, to_emb, why)
                if result is not None:
                    return result
        return None

    def _decode(self, t: Taken, kept: Kept, newest: Kept | None, to_emb: list[np.ndarray], why: str | None
                ) -> FrameResult | None:
        """Decode this frame's prompts, mapped into the kept embedding's frame; None if it expired."""
        enc, hw = kept.enc, t.frame.image.shape[:2]
        seg = self.segmenter
        motion = as_motion(to_emb, [])
        mapped = list(t.prompts) if motion.still else motion.map_prompts(t.prompts, enc.original_hw)
        t0 = time.perf_counter()
        try:
            logits, scores = seg.decode_logits(enc, mapped) if mapped else self._nothing()
            refined = [False] * len(mapped)
            if self.refine and mapped:
                logits, scores, refined = self._refine(enc, mapped, logits, scores)
            seg.backend.sync()
        except ExpiredEmbedding:
            # Its slot was taken by an encode that finished since: the next one serves.
            self.stats.reencoded += 1
            return None
        t.timings["decode"] = t.timings.get("decode", 0.0) + (time.perf_counter() - t0) * 1e3
        d = Decoded(kept, t.version, mapped, logits, scores, refined, t.frame.index, t.frame.timestamp,
                    t.frame.index, to_emb, newest)
        self._decoded = d if self.motion else None
        self._broken = None
        return self._result(t, d, to_emb, why)

    @staticmethod
    def _nothing():
        from medsam_edge.contract import LOW_RES_HW

        return np.zeros((0, 1, LOW_RES_HW, LOW_RES_HW), np.float32), np.zeros(0, np.float32)

    def _refine(self, enc: Encoded, mapped: list[Prompt], logits, scores):
        """A second pass with each box prompt's mask centroid as a click (in the embedding's frame)."""
        masks = self.segmenter.processing.masks(logits, enc.original_hw, enc.resized_hw)
        again = {i: p.with_points([c], [1]) for i, (p, m) in enumerate(zip(mapped, masks))
                 if p.box is not None and (c := centroid_click(m)) is not None}
        if not again:
            return logits, scores, [False] * len(mapped)
        l2, s2 = self.segmenter.decode_logits(enc, list(again.values()))
        logits, scores = logits.copy(), scores.copy()
        for k, i in enumerate(again):
            logits[i], scores[i] = l2[k], s2[k]
        return logits, scores, [i in again for i in range(len(mapped))]

    def _result(self, t: Taken, d: Decoded, to_emb: list[np.ndarray], why: str | None) -> FrameResult:
        frame, enc = t.frame, d.kept.enc
        hw, seg = frame.image.shape[:2], self.segmenter
        regions = [prompt_region(p, hw) for p in t.prompts]
        motion = as_motion(to_emb, regions)
        t0 = time.perf_counter()
        logits = d.logits if motion.still else motion.warp_logits(d.logits, enc.original_hw, enc.resized_hw, seg.pre)
        t1 = time.perf_counter()
        masks = seg.processing.masks(logits, enc.original_hw, enc.resized_hw)
        t2 = time.perf_counter()
        timings = t.timings
        if not motion.still:
            timings["warp"] = (t1 - t0) * 1e3
        timings["postprocess"] = (t2 - t1) * 1e3
        lost = self.prompter.observe(masks, d.scores, frame.image)
        timings["total"] = sum(v for k, v in timings.items() if k != "capture_to_mask")
        if frame.captured_at:
            timings["capture_to_mask"] = (time.perf_counter() - frame.captured_at) * 1e3
        own = enc.frame_index == frame.index
        newest = self.cache.newest(hw)
        kind = FRESH if own else NEWEST if newest is not None and newest.enc is enc else NEAR
        made = WARPED if d.frame != frame.index else FRESH if own else DECODED
        self.stats.frames += 1
        self.stats.embeddings[kind] += 1
        self.stats.made[made] += 1
        then = enc.timestamp if enc.timestamp is not None else frame.timestamp
        return FrameResult(
            frame=frame, prompts=list(t.prompts), masks=masks, scores=d.scores.copy(), reuse=kind, embedding=enc,
            staleness=max(0, frame.index - enc.frame_index), lost=lost, refined=list(d.refined),
            logits=logits if self.keep_logits else None, latency_ms=timings, backend=seg.backend.name,
            motion=None if (own and motion.still) or not self.motion else motion.record(), made=made, why=why,
            decode_frame=d.frame, embedding_ms=max(0.0, (frame.timestamp - then) * 1e3),
            decode_ms=max(0.0, (frame.timestamp - d.timestamp) * 1e3), prompts_version=t.version)
