"""How far a reduced-precision encoder/decoder is from the FP32 reference, on real frames.

A Scorer runs the reference once per frame and box and keeps its embeddings and masks;
each candidate (an FP16 or INT8 file, or a trial during a sensitivity search) is then
scored against them: embedding cosine and relative error per frame, mask Dice and IoU
per box, and Dice against ground truth where a box has it. Both sides see the same
preprocessed tensor and decode through the runtime's Segmenter (its box mapping and mask
postprocess), so only the arithmetic differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from medsam_edge.contract import box_tokens
from medsam_edge.engines.loaders import open_files
from medsam_edge.metrics import cosine, dice, iou, rel_err
from medsam_edge.runtime.geometry import boxes_to_model
from medsam_edge.runtime.segmenter import Encoded, Segmenter

from .boxes import EvalBox, tighten
from .frames import FrameSet

if TYPE_CHECKING:  # fp16 imports onnx, which scoring does not need
    from .fp16 import Verdict


@dataclass
class Scores:
    """Per-frame and per-box figures of one candidate."""

    cosine: list[float] = field(default_factory=list)
    rel_err: list[float] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    truth_dice: list[float] = field(default_factory=list)
    truth_iou: list[float] = field(default_factory=list)
    logits_rel_err: list[float] = field(default_factory=list)
    dice_source: list[str] = field(default_factory=list)  # the source of each dice entry

    def by_source(self) -> dict[str, dict]:
        """Dice stats per source: a user's frames come from one source, so a file must hold
        on each, not only on the pool (where an easy source hides a hard one)."""
        out: dict[str, list[float]] = {}
        for d, src in zip(self.dice, self.dice_source):
            out.setdefault(src, []).append(d)
        return {src: stats(v) for src, v in sorted(out.items())}

    def summary(self) -> dict:
        return {
            "frames": len(self.cosine),
            "boxes": len(self.dice),
            "dice": stats(self.dice),
            "dice_by_source": self.by_source(),
            "iou": stats(self.iou),
            "embedding_cosine": stats(self.cosine),
            "embedding_rel_err": {"mean": _mean(self.rel_err), "max": _max(self.rel_err)},
            "logits_rel_err": {"mean": _mean(self.logits_rel_err), "max": _max(self.logits_rel_err)},
            "truth": {"boxes": len(self.truth_dice), "dice": stats(self.truth_dice), "iou": stats(self.truth_iou)},
        }


def stats(values: Sequence[float]) -> dict:
    """mean, 5th percentile and worst: the figures the targets are stated in."""
    if not len(values):
        return {"mean": None, "p5": None, "worst": None}
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "p5": float(np.percentile(v, 5)), "worst": float(v.min())}


@dataclass
class _Ref:
    index: int
    embedding: np.ndarray
    boxes: np.ndarray  # (K, 4) in the frame's original pixels
    logits: np.ndarray  # (K, 1, 256, 256)
    masks: np.ndarray  # (K, H, W)
    truths: list
    hw: tuple  # (original_hw, resized_hw)

    def encoded(self, embedding) -> Encoded:
        return Encoded(embedding, *self.hw, self.index)

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's box tokens in the model frame (what calibration feeds a decoder file)."""
        return box_tokens(boxes_to_model(self.boxes, *self.hw))


class Scorer:
    """Reference outputs for `indices` of `frames`, with the boxes in `prompts`.

    reference: an engines backend (the PyTorch reference, or the FP32 ONNX pair on onnxruntime).
    Every decode, reference and candidate, goes through the runtime's own Segmenter: the
    same box mapping, decoder calls and mask postprocess a user's stream runs.
    """

    def __init__(self, frames: FrameSet, indices: Sequence[int], prompts: dict[int, list[EvalBox]],
                 reference, on_frame: Callable[[int], None] | None = None) -> None:
        self.frames = frames
        self.refs: list[_Ref] = []
        seg = Segmenter(reference, frames.pre)
        for i in indices:
            emb = np.asarray(reference.embedding_to_numpy(reference.encode(frames.tensor(i))), np.float32)
            m = frames.meta[i]
            hw = (tuple(m["original_hw"]), tuple(m["resized_hw"]))
            enc = Encoded(emb, *hw, i)
            boxes = np.stack([p.box for p in prompts[i]])
            derived = [p.origin == "derived" for p in prompts[i]]
            if any(derived):
                # Tighten centre boxes onto what the reference segments there.
                masks, _, _ = seg.decode(enc, boxes)
                boxes = np.stack([tighten(b, mk) if d else b for b, mk, d in zip(boxes, masks, derived)])
            masks, _, logits = seg.decode(enc, boxes)
            self.refs.append(_Ref(i, emb, boxes, logits, masks, [p.truth for p in prompts[i]], hw))
            if on_frame:
                on_frame(1)

    def score(self, encoder=None, decoder=None, masks: bool = True, limit: int | None = None,
              on_frame: Callable[[int], None] | None = None) -> Scores:
        """Candidate parts; encoder None: the reference embeddings. `limit`: first frames only."""
        s = Scores()
        if masks and decoder is None:
            raise ValueError("masks need a decoder to run")
        seg = Segmenter(decoder, self.frames.pre) if masks else None
        for r in self.refs[:limit]:
            emb = (r.embedding if encoder is None
                   else np.asarray(encoder.embedding_to_numpy(encoder.encode(self.frames.tensor(r.index))), np.float32))
            s.cosine.append(cosine(emb, r.embedding))
            s.rel_err.append(rel_err(emb, r.embedding))
            if seg is not None:
                got, _, logits = seg.decode(r.encoded(emb), r.boxes)
                s.logits_rel_err.append(rel_err(logits, r.logits))
                for g, want, truth in zip(got, r.masks, r.truths):
                    s.dice.append(dice(g, want))
                    s.dice_source.append(self.frames.meta[r.index]["source"])
                    s.iou.append(iou(g, want))
                    if truth is not None:
                        s.truth_dice.append(dice(g, truth))
                        s.truth_iou.append(iou(g, truth))
            if on_frame:
                on_frame(1)
        return s

    def reference_truth(self) -> Scores:
        """The reference's own masks against ground truth (the ceiling for every precision)."""
        s = Scores()
        for r in self.refs:
            s.cosine.append(1.0)
            s.rel_err.append(0.0)
            for want, truth in zip(r.masks, r.truths):
                s.dice.append(1.0)
                s.iou.append(1.0)
                if truth is not None:
                    s.truth_dice.append(dice(want, truth))
                    s.truth_iou.append(iou(want, truth))
        return s


# The targets: mask Dice against the FP32 reference on real frames.
TARGETS = {"fp16": {"mean": 0.995, "worst": 0.98}, "int8": {"mean": 0.97, "p5": 0.93}}


def meets(dice_stats: dict, target: dict) -> bool:
    return all(dice_stats[k] is not None and dice_stats[k] >= v for k, v in target.items())


def meets_by_source(by_source: dict[str, dict], target: dict) -> bool:
    """Every source's own mean Dice meets the target's mean bound (its tail bounds are
    left to the pool: a source may have only a frame or two)."""
    return "mean" not in target or all(s["mean"] is not None and s["mean"] >= target["mean"]
                                       for s in by_source.values())


def meets_summary(summary: dict, target: dict) -> bool:
    """The rule every verdict uses, in the searches and in the report: the target met by the
    pooled frames, and its mean bound by every source's own mean."""
    return meets(summary["dice"], target) and meets_by_source(summary["dice_by_source"], target)


def judge(scorer: Scorer, part: str, fp32_decoder, target: dict, threads: int | None = None,
          also: Sequence[Callable[[Path], object]] = ()):
    """Path -> Verdict for a candidate encoder or decoder, masks scored on the scorer's frames.

    loss: 1 - mean Dice, plus a thousandth of the embedding and logits relative errors so
    that candidates with equal masks are still told apart.
    passed: meets_summary, per source as well as pooled (a pool hid a hard source:
    docs/decisions.md#int8-search-margin-and-backends).
    also: more backends for the candidate (path -> a context-managed backend running both
    parts), each scored once the ones before have passed it: a candidate passes only where
    every backend's arithmetic meets the target (OpenVINO's integer kernels lost more than
    onnxruntime's fake quantization, same section). The verdict is the failing backend's,
    else the one with the highest loss; figures["backend"] names it, figures["judged"] has
    every backend's.
    """

    def run(path: Path) -> Verdict:
        cand = open_files(**{part: path}, threads=threads)
        enc, dec = (cand, fp32_decoder) if part == "encoder" else (None, cand)
        s = scorer.score(enc, dec)
        cand.close()
        verdicts = [_verdict(s, target, cand.name)]
        for opener in also:
            if not verdicts[-1].passed:
                break
            with opener(path) as backend:
                verdicts.append(_verdict(scorer.score(backend, backend), target, backend.name))
        worst = next((v for v in verdicts if not v.passed), max(verdicts, key=lambda v: v.loss))
        worst.figures["judged"] = {v.figures["backend"]: {"loss": v.loss, "passed": v.passed} for v in verdicts}
        return worst

    return run


def _verdict(s: Scores, target: dict, backend: str) -> Verdict:
    from .fp16 import Verdict

    summary = {**s.summary(), "backend": backend}
    loss = (1.0 - summary["dice"]["mean"]) + 1e-3 * ((_mean(s.rel_err) or 0.0) + (_mean(s.logits_rel_err) or 0.0))
    if not np.isfinite(loss):
        loss = float("inf")
    return Verdict(loss, meets_summary(summary, target), summary)


def cosine_signal(scorer: Scorer, frames: int = 2, threads: int | None = None) -> Callable[[Path], float]:
    """Encoder path -> 1 - mean embedding cosine on the first `frames` frames: the cheap
    sensitivity signal."""

    def run(path: Path) -> float:
        with open_files(path, threads=threads) as encoder:
            s = scorer.score(encoder, masks=False, limit=frames)
        c = float(np.mean(s.cosine))
        return 1.0 - c if np.isfinite(c) else float("inf")

    return run


def _mean(v) -> float | None:
    return float(np.mean(v)) if len(v) else None


def _max(v) -> float | None:
    return float(np.max(v)) if len(v) else None
