"""Answering real-time frames at the capture rate: decode once per (embedding, prompts in
the embedding's frame), warp those logits to every frame after it (runtime.realtime has
the threads; this is what its answering thread does with each frame).

For each frame: take() finds its prompts (a tracker's not yet shown a mask: carried along
the motion from the frame they were given on) and follows it from the frame before (the
motion chain, runtime.follow). answer() then warps the last decode to it whenever the
motion to it is known and the prompts version is the same. Where a new embedding has landed
or a fixed box has moved beyond PROMPT_TOLERANCE on the anatomy, it also starts a decode
beside (one at a time), taken up from the next frame on. The decoder runs in this thread
only where nothing can be warped: the first answer, new prompts, a broken chain; then on
the kept embedding the reuse cache judges closest, else the newest the frame reaches,
saying why. None: no embedding it can reach yet.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from medsam_edge.engines.base import ExpiredEmbedding
from medsam_edge.runtime.follow import EYE, MotionChain, as_motion, homogeneous, invert, moved_share, refine
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

    kept: the embedding (and its frame's small copy); version: the prompts version decoded;
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
    small: SmallFrame | None = None  # the frame that asked for it, as the motion sees it



@dataclass
class _Background:
    """A decode running beside the answering thread."""

    newest: Kept | None  # the newest embedding when it was asked for
    decoded: Decoded | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class Taken:
    """A frame taken from the queue, followed, with the prompts it is answered for."""

    frame: Frame
    prompts: list[Prompt]
    version: int
    small: SmallFrame | None
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
        self._observed: int | None = None  # the prompts version the tracker last saw a mask for
        self._origin: tuple | None = None  # (version, frame, its small frame) a tracker's unseen prompts were given on
        self._carried: list[Prompt] | None = None  # those prompts, carried to the last frame taken
        self._background: _Background | None = None  # a decode running beside, at most one

    def blank(self) -> None:
        if self.chain is not None:
            self.chain.blank()

    def take(self, frame: Frame) -> Taken:
        """The frame's prompts, and its link in the motion chain."""
        prompts = self.prompter.prompts_for(frame)
        version = self.prompter.version
        taken = Taken(frame, prompts, version, None, {})
        if self.chain is None:
            return taken
        t0 = time.perf_counter()
        # A tracker's prompts that no answer has shown it yet belong to the frame they
        # were given on: carried along the chain to this one, as the anatomy moved while the
        # first embedding was being made (at 60 fps, 20 frames and 30 px on a probe sweep).
        carry = self.prompter.tracker is not None and self._observed != version
        taken.small = SmallFrame.of(frame.image)
        if carry and (self._origin is None or self._origin[0] != version):
            self._origin, self._carried = (version, frame.index, taken.small), None
        regions = self._carried if carry and self._carried is not None else prompts
        taken.broken = self.chain.step(frame.index, taken.small, regions)
        if carry and taken.broken is None and self._origin[1] != frame.index and \
                len(self._carried or prompts) == len(prompts):
            back = [self.chain.between(frame.index, k, self._origin[1]) for k in range(len(prompts))]
            if all(b is not None for b in back):
                back = refine(self.chain.estimator, self._origin[2], taken.small, regions, back)
                taken.prompts = as_motion([invert(b) for b in back], []).map_prompts(
                    prompts, frame.image.shape[:2])
        self._carried = taken.prompts if carry else None
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
                return refine(self.chain.estimator, kept.small, t.small, t.prompts, chained)
        if abs(e - index) <= self.gap and t.small is not None:
            # Not in the chain (a frame passed over, or one ahead of this): the gap is a
            # frame or two, which a direct estimate follows.
            m = self.chain.estimator.estimate(kept.small, t.small, t.prompts)
            if m.applied:
                return [homogeneous(p.matrix) for p in m.prompts]
        return None

    def _to_decoded(self, d: Decoded, t: Taken) -> list[np.ndarray] | None:
        if len(d.ref_to_emb) != len(t.prompts):
            return None
        chained = [self.chain.between(t.frame.index, k, d.ref) for k in range(len(t.prompts))]
        if any(a is None for a in chained):
            return None
        chained = refine(self.chain.estimator, d.small, t.small, t.prompts, chained)
        return [r @ a for r, a in zip(d.ref_to_emb, chained)]

    def answer(self, t: Taken) -> FrameResult | None:
        """The frame's answer, or None where no embedding it can reach is there yet."""
        hw = t.frame.image.shape[:2]
        newest = self.cache.newest(hw)
        if not self.motion:
            return None if newest is None else self._decode(t, newest, newest, [EYE] * len(t.prompts), None)
        self._adopt()
        d, why = self._decoded, t.broken
        waiting = self._background is not None
        landed = newest is not None and (d is None or newest is not d.newest) and \
            not (waiting and self._background.newest is newest)
        reach_newest = self._reach(newest, t) if landed else None
        if d is not None and why is None:
            to_d = self._to_decoded(d, t)
            if d.version != t.version or len(d.mapped) != len(t.prompts):
                why = f"the prompts changed (version {t.version})"
            elif to_d is None:
                why = "the motion to the decoded frame is not known"
            else:
                # The last decode still reaches this frame: it answers now, warped, and a
                # decode it calls for runs beside (one at a time) and answers from the frame
                # after it lands, so the frame rate never waits for the decoder.
                again = None
                if reach_newest is not None:
                    again = (newest, reach_newest)
                elif self.prompter.tracker is None:
                    # A tracker's box, same version, moved only by masks that are this decode
                    # warped: in the embedding's frame nothing moved, and redrawing the box
                    # from them would chase the decoder's own fixed point, a decode a frame.
                    # Its box counts at the next embedding. A fixed box on moving anatomy does.
                    motion = as_motion(to_d, [])
                    mapped = motion.map_prompts(t.prompts, hw) if not motion.still else t.prompts
                    share = max((moved_share(a, b, hw) for a, b in zip(d.mapped, mapped)), default=0.0)
                    if share > PROMPT_TOLERANCE and self.segmenter.backend.embedding_valid(d.kept.enc.embedding):
                        again = (d.kept, to_d)
                if again is not None and not waiting:
                    chosen = next(((k, a) for k, a in self._candidates(t, newest, reach_newest, landed, again)
                                   if a is not None), again)
                    self._request(t, chosen[0], newest, chosen[1])
                return self._result(t, d, to_d, None)
        elif d is None and why is None:
            why = self._broken or "the first answer"
        for chosen, to_emb in self._candidates(t, newest, reach_newest, landed, None):
            if to_emb is not None:
                result = self._decode(t, chosen, newest, to_emb, why)
                if result is not None:
                    return result
        return None

    def _candidates(self, t: Taken, newest: Kept | None, reach_newest, landed: bool, last) -> list[tuple]:
        """(kept, transforms or None) to decode on, best first: the kept embedding whose frame
        is closest where the prompts are (the reuse cache's judgement: a heartbeat's phase, a
        view come back), else the newest it reaches, else `last` (the last decode's)."""
        out = []
        kept = self.cache.kept(t.frame.image.shape[:2])
        if t.small is not None and t.prompts and kept:
            choice = self.cache.choose(t.small, t.prompts, kept, follow=True)
            if choice.kept is not None and choice.motion is not None:
                out.append((choice.kept, [homogeneous(p.matrix) for p in choice.motion.prompts]))
        if newest is not None:
            out.append((newest, reach_newest if landed else self._reach(newest, t)))
        if last is not None:
            out.append(last)
        return out

    @property
    def busy(self) -> bool:
        """A decode is running beside the answering thread (its answer not taken up yet)."""
        job = self._background
        return job is not None and not job.done.is_set()

    def _request(self, t: Taken, kept: Kept, newest: Kept | None, to_emb: list[np.ndarray]) -> None:
        """Decode this frame's prompts on `kept` in the background."""
        job = _Background(newest)

        def work() -> None:
            try:
                job.decoded = self._decode_only(t, kept, newest, to_emb)
            except BaseException as e:  # raised in the answering thread at adoption
                job.error = e
            finally:
                job.done.set()

        job.thread = threading.Thread(target=work, name="medsam-decoder", daemon=True)
        self._background = job
        job.thread.start()

    def _adopt(self) -> None:
        """A background decode that finished becomes the one later frames are warped from."""
        job = self._background
        if job is None or not job.done.is_set():
            return
        self._background = None
        if job.error is not None:
            raise job.error
        if job.decoded is not None:
            self._decoded = job.decoded
            self.stats.decoded_beside += 1

    def close(self) -> None:
        """Let a background decode finish (its answer is dropped)."""
        job = self._background
        if job is not None and job.thread is not threading.current_thread():
            job.thread.join(timeout=30)

    def _decode_only(self, t: Taken, kept: Kept, newest: Kept | None, to_emb: list[np.ndarray]) -> Decoded | None:
        """This frame's prompts mapped into the kept embedding's frame, decoded; None if it expired."""
        enc, seg = kept.enc, self.segmenter
        motion = as_motion(to_emb, [])
        mapped = list(t.prompts) if motion.still else motion.map_prompts(t.prompts, enc.original_hw)
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
        return Decoded(kept, t.version, mapped, logits, scores, refined, t.frame.index, t.frame.timestamp,
                       t.frame.index, to_emb, newest, t.small)

    def _decode(self, t: Taken, kept: Kept, newest: Kept | None, to_emb: list[np.ndarray], why: str | None
                ) -> FrameResult | None:
        """Decode this frame's prompts (in this thread) and answer it with them; None if it expired."""
        t0 = time.perf_counter()
        d = self._decode_only(t, kept, newest, to_emb)
        if d is None:
            return None
        t.timings["decode"] = t.timings.get("decode", 0.0) + (time.perf_counter() - t0) * 1e3
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
        self._observed = t.version
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
