"""Embedding reuse: spend the encoder only when the picture changed where it matters.

- exact repeat (frozen image, looping cine): a digest of the frame's bytes finds an
  embedding already computed;
- near repeat (probe held still, or moving little): judged against the frame the current
  embedding came from (not the previous frame, so slow drift cannot pile up), with a cap
  on how many frames in a row may reuse:
  - where the prompts are: each prompt's region (its box grown by a margin) is judged
    on up to 32x32 cells of the region itself, so a change inside a small box is seen.
    With `motion` on (the default), the optical flow finds how the anatomy moved since
    the embedding's frame (runtime.motion) and the change left after that motion, a small
    gain change and the noise drawn afresh on every frame must be at most `threshold`
    (runtime.change); the answer's prompts and masks then follow that motion. A motion
    the flow finds but cannot follow (off the picture, too large a zoom or turn) means a
    fresh embedding; finding none to follow, the change is judged as the frames stand.
    With `motion` off, the plain difference must be at most `threshold` (it includes any
    motion: a reused embedding is then only as good as the encoder is shift-equivariant,
    and it is not exactly);
  - the whole picture, for cuts and probe lifts: how the grey levels of the image area
    (the fan or the scope's circle, without the text, clocks and traces around it:
    motion.image_area) are spread must change by at most `scene_threshold`;
  - without prompts the whole frame's 32x32 thumbnail decides, as before prompts were
    known here.

The cache keeps no more embeddings than the backend can keep valid at once
(engines.base.max_kept_embeddings), and asks the backend before handing one out.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from medsam_edge.engines.base import Backend, max_kept_embeddings
from medsam_edge.runtime.change import region_change
from medsam_edge.runtime.motion import MARGIN, Motion, MotionEstimator, identity, prompt_region, region_difference
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.result import EXACT, FRESH, NEAR
from medsam_edge.runtime.segmenter import Encoded
from medsam_edge.runtime.small_frame import SmallFrame

THUMB = 32
# Kept embeddings judged where the prompts are, per frame: the newest and the closest others.
CANDIDATES = 3


@dataclass(frozen=True)
class ReusePolicy:
    """When a near repeat may reuse the last embedding (differences are fractions of 0..255).

    threshold: most change over any prompt's region: with `motion`, beyond the motion,
        gain and noise (runtime.change); without, the mean absolute difference; without
        prompts, the mean absolute difference of the whole frame's thumbnails.
    scene_threshold: most change in how the image area's grey levels are spread
        (scene_difference, 0..1), for cuts and probe lifts.
    max_consecutive: most frames in a row answered from kept embeddings.
    cache_size: embeddings kept for exact and near repeats (32 of LiteMedSAM's or MedSAM's
        4 MB host arrays: 128 MB), fewer where the backend keeps fewer valid.
    margin: a prompt's region is its box grown by this share of its size on each side.
    motion: compensate the motion between the embedding's frame and this one.
    """

    exact: bool = True
    near: bool = True
    # Chosen from Dice-vs-reuse curves on the shared moving clips (bench.reuse; figures:
    # docs/decisions.md#reuse-threshold).
    threshold: float = 0.006
    scene_threshold: float = 0.15
    max_consecutive: int = 3
    cache_size: int = 32
    motion: bool = True
    margin: float = MARGIN

    @classmethod
    def off(cls) -> "ReusePolicy":
        return cls(exact=False, near=False)


def digest(image: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(image).data)
    h.update(repr(image.shape).encode())
    return h.digest()


def thumbnail(image: np.ndarray) -> np.ndarray:
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def thumb_difference(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean absolute difference of two thumbnails (over `where` if given), 0..1."""
    d = np.abs(a - b)
    return float(d[where].mean() if where is not None and where.any() else d.mean()) / 255.0


def scene_difference(emb: SmallFrame, cur: SmallFrame, levelled: bool = False) -> float:
    """How differently the grey levels of the image area are spread: the total variation
    distance (0..1) of 16-bin histograms over the embedding frame's image area.

    Motion moves anatomy around without changing much how bright the picture is; a probe
    lifted off the skin, a gain or depth change, or a cut to another view does. (A cut to
    a similar-looking view is caught where the prompts are: the flow explains nothing.)
    levelled: a change of gain alone does not count (following motion from frame to frame
    through an endoscope's auto-exposure, where an embedding's answer would still change)."""
    if levelled:
        area = emb.area()
        return 0.5 * float(np.abs(emb.spread(area, levelled=True) - cur.spread(area, levelled=True)).sum())
    return 0.5 * float(np.abs(emb.spread() - cur.spread(emb.area())).sum())


@dataclass
class Kept:
    """A fresh embedding kept for near repeats, with what its frame looked like."""

    enc: Encoded
    small: SmallFrame
    thumb: np.ndarray | None = None  # (32, 32) float32 grey of the whole frame, for lookups without prompts


@dataclass
class ReuseChoice:
    """Whether a kept embedding may answer a frame: which, the motion to apply to the
    answer (from the embedding's frame to this one), a note for the frame's record, and
    the differences judged."""

    kept: Kept | None
    motion: Motion | None = None
    note: str = ""
    region: float | None = None  # the largest prompt-region difference
    scene: float | None = None
    regions: list[float] | None = None  # each prompt region's difference
    change: float | None = None  # the largest change beyond motion, gain and noise (runtime.change)


@dataclass
class Lookup:
    """The cache's answer for one frame. enc: the embedding to use, or None (encode it,
    then hand this Lookup to store()); kind: result.EXACT, NEAR or FRESH; motion: for a
    near repeat, from the embedding's frame to this one; note: for the frame's record.
    digest, small, thumb: what the lookup computed of the frame, so store() does not
    compute it again."""

    enc: Encoded | None
    kind: str
    motion: Motion | None = None
    note: str = ""
    digest: bytes | None = None
    small: SmallFrame | None = None
    thumb: np.ndarray | None = None


def closest(kept: list[Kept], small: SmallFrame, prompts: list[Prompt], margin: float = MARGIN,
            scene_threshold: float | None = None) -> ReuseChoice:
    """The kept embedding (kept: newest last, all of the frame's size) whose frame is
    closest to this one where the prompts are, judged among the newest and the
    CANDIDATES - 1 others whose whole frames look most like this one (a looping cine, a
    heartbeat, a probe back where it was). Candidates whose picture changed beyond
    scene_threshold are passed over. ReuseChoice.kept is None when none qualifies."""
    ranked = sorted(kept[:-1], key=lambda k: thumb_difference(small.thumb, k.small.thumb))[:CANDIDATES - 1]
    regions = [prompt_region(q, small.original_hw, margin) for q in prompts]
    best = ReuseChoice(None)
    for k in [kept[-1], *ranked]:
        scene = None if scene_threshold is None else scene_difference(k.small, small)
        if scene is not None and scene > scene_threshold:
            if best.kept is None and best.scene is None:
                best = ReuseChoice(None, note=f"fresh: the picture changed (scene difference {scene:.2f})", scene=scene)
            continue
        diffs = [region_difference(k.small, small, r, identity()) for r in regions]
        if any(d is None for d in diffs):
            continue
        worst = max(diffs)
        if best.region is None or worst < best.region:
            best = ReuseChoice(k, region=worst, scene=scene, regions=diffs)
    return best


class EmbeddingCache:
    """Decides, per frame, whether an embedding can be reused, and remembers fresh ones.

    Near repeats are looked for among the kept embeddings, not only the newest: the
    frames of a looping cine (or a probe back where it was) come back, and the video
    coding that made them differ in bytes does not make them differ in anatomy.
    Deterministic sessions call lookup()/store(); real-time sessions store() from the
    encoder's thread and ask newest()/choose() from the answering one (a lock keeps the
    kept list whole between them).
    """

    def __init__(self, policy: ReusePolicy, backend: Backend | None = None) -> None:
        self.policy = policy
        self.backend = backend
        self.capacity = policy.cache_size if backend is None else max_kept_embeddings(backend, policy.cache_size)
        self.estimator = MotionEstimator(policy.margin) if policy.near and policy.motion else None
        self._by_digest: OrderedDict[bytes, Encoded] = OrderedDict()
        # Newest last. At least the newest is kept (it is checked for validity before use).
        self._near: list[Kept] = []
        self._consecutive = 0
        self._lock = threading.Lock()

    def lookup(self, image: np.ndarray, prompts: list[Prompt] | None = None) -> Lookup:
        """The embedding this frame may reuse, or Lookup.enc None (then store() the fresh one).

        prompts: this frame's prompts (frame pixels), judged where they are; None or none
        at all: the whole frame decides against the newest embedding."""
        p = self.policy
        out = Lookup(None, FRESH)
        if p.exact and self.capacity:
            out.digest = digest(image)
            hit = self._by_digest.get(out.digest)
            if hit is not None and not self._valid(hit):
                del self._by_digest[out.digest]
                hit = None
            if hit is not None and hit.original_hw == image.shape[:2]:
                self._by_digest.move_to_end(out.digest)
                self._consecutive = 0
                out.enc, out.kind = hit, EXACT
                return out
        if not p.near:
            return out
        kept = self.kept(image.shape[:2])
        if not kept or self._consecutive >= p.max_consecutive:
            return out
        if not prompts:
            out.thumb = thumbnail(image)
            newest = kept[-1]
            if newest is self._near[-1] and thumb_difference(out.thumb, newest.thumb) <= p.threshold:
                self._consecutive += 1
                out.enc, out.kind = newest.enc, NEAR
            return out
        out.small = SmallFrame.of(image)
        choice = self.choose(out.small, prompts, kept)
        out.note = choice.note
        if choice.kept is not None:
            self._consecutive += 1
            out.enc, out.kind, out.motion = choice.kept.enc, NEAR, choice.motion
        return out

    def kept(self, hw: tuple[int, int] | None = None) -> list[Kept]:
        """The kept embeddings still valid (of frames of size hw), newest last."""
        with self._lock:
            self._near = [k for k in self._near if self._valid(k.enc)]
            return [k for k in self._near if hw is None or k.enc.original_hw == hw]

    def newest(self, hw: tuple[int, int] | None = None) -> Kept | None:
        kept = self.kept(hw)
        return kept[-1] if kept else None

    def choose(self, small: SmallFrame, prompts: list[Prompt], kept: list[Kept], follow: bool = False
               ) -> ReuseChoice:
        """Which kept embedding, if any, may answer this frame (its small frame and prompts): the
        closest where the prompts are, if the change there is under the threshold.
        With compensation on, the change is judged after the motion the flow finds, beyond
        gain and noise (runtime.change); a motion the flow finds but cannot follow refuses.
        follow: the answer will be warped by the motion (real time), so a motion that is not
        applied refuses too. Without compensation, the plain difference is judged."""
        p = self.policy
        best = closest(kept, small, prompts, p.margin, p.scene_threshold)
        if best.kept is None:
            return ReuseChoice(None, note=best.note, scene=best.scene)
        if self.estimator is None:
            return best if best.region <= p.threshold else ReuseChoice(None, region=best.region, scene=best.scene)
        m = self.estimator.estimate(best.kept.small, small, prompts, best.regions)
        if not m.applied and (m.beyond or follow):
            # The anatomy moved in a way no transform follows (off the picture, a zoom or
            # turn too large): encode afresh rather than answer where it no longer is.
            return ReuseChoice(None, m, f"fresh: {m.why}", best.region, best.scene)
        matrices = [q.matrix for q in m.prompts] if m.applied else [identity()] * len(m.regions)
        changes = [region_change(best.kept.small, small, r, a) for r, a in zip(m.regions, matrices)]
        worst = None if any(c is None for c in changes) else max(changes)
        if worst is None or worst > p.threshold:
            return ReuseChoice(None, None, "", best.region, best.scene, best.regions, worst)
        best.motion, best.change = m, worst
        if not m.applied:
            # No motion to follow (noise, a looping cine's coding, flow that explains
            # nothing): the embedding answers as it is, as without compensation.
            best.note = f"motion not compensated: {m.why}"
        return best

    def _valid(self, enc: Encoded) -> bool:
        return self.backend is None or self.backend.embedding_valid(enc.embedding)

    def store(self, image: np.ndarray, enc: Encoded, looked: Lookup | None = None,
              small: SmallFrame | None = None) -> Kept:
        """Remember a fresh embedding of `image` (looked: its lookup, whose digest and
        small frame are reused); returns what is kept of it."""
        p = self.policy
        looked = looked or Lookup(None, FRESH)
        self._consecutive = 0
        kept = Kept(enc, small or looked.small or SmallFrame.of(image),
                    looked.thumb if looked.thumb is not None else thumbnail(image))
        with self._lock:
            if p.exact and self.capacity:
                self._by_digest[looked.digest or digest(image)] = enc
                while len(self._by_digest) > self.capacity:
                    self._by_digest.popitem(last=False)
            if p.near:
                self._near.append(kept)
                del self._near[:-max(1, self.capacity)]
        return kept
