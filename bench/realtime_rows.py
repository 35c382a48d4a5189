"""Real-time rows over long runs (2,000 frames by default) on the shared moving clips (the
standard three, or every one) and on ground-truth clips: what share of the frames after the
first answer were answered, how many were dropped, capture-to-mask p50/p99 by tenths of the
run (flat or growing), embeddings per second, how the answers were made and how old their
embeddings were, and Dice against the truth where the truth is known.

Real clips are read into memory once (at most MAX_CLIP_FRAMES) and played forward and
backward (no cut at the loop, so motion stays followable); ground-truth clips likewise.
Frames are submitted at the capture rate by bench/lockstep.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam_edge.bench import reuse
from medsam_edge.bench.clips import Clip
from medsam_edge.bench.lockstep import Played, play
from medsam_edge.bench.streaming import tenths, trend
from medsam_edge.bench.truth import flicker, flicker_summary, made_counts, summary
from medsam_edge.metrics import dice

MAX_CLIP_FRAMES = 300
# Flicker over the first answers only: unpacked masks of a whole 2,000-frame run would not fit comfortably.
FLICKER_ANSWERS = 400
# The clips the standard benchmark has always streamed, with its boxes (bench/standard.py).
STANDARD_CLIPS = ("ultrasound/video/busi_sweep.mp4", "ultrasound/video/echo_apical_loop.mp4",
                  "endoscopy/video/lap_cholec80_VID25_324_and_VID43_743_a.mp4")


def read_clip(path: Path, limit: int = MAX_CLIP_FRAMES) -> tuple[list[np.ndarray], float]:
    """Up to `limit` RGB frames of a video and its frame rate (30 where it says none)."""
    from medsam_edge.runtime.sources import open_source

    frames = []
    with open_source(str(path)) as src:
        fps = float(getattr(src, "fps", 0) or 30.0)
        for frame in src:
            frames.append(frame.image)
            if len(frames) >= limit:
                break
    return frames, fps


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.median(v)), 2) if v else None


def row(played: Played, name: str, truth_at=None, matrix_at=None, position=None) -> dict:
    """One real-time row from a lockstep run; truth_at(position) -> mask where the truth is known."""
    lat = [a.capture_to_mask_ms for a in played.answers if a.capture_to_mask_ms is not None]
    answered_after, captured_after = played.after_first_answer()
    out = {"clip": name, "fps": played.fps, "frames": played.submitted, "answered": len(played.answers),
           "frames_after_first_answer": captured_after, "answered_after_first_answer": answered_after,
           "answered_share_after_first": played.answered_share_after_first(),
           "dropped": played.dropped, "blank": played.blank, "encoded": played.encoded,
           "seconds": round(played.seconds, 2),
           "embeddings_per_s": round(played.encoded / played.seconds, 3) if played.seconds else None,
           "late_submits": played.late_submits, "made": made_counts(played),
           "embedding_age_frames_median": _median(a.embedding_age_frames for a in played.answers),
           "embedding_age_ms_median": _median(a.embedding_age_ms for a in played.answers),
           "decode_age_frames_median": _median(a.decode_age_frames for a in played.answers),
           "why": _why_counts(played),
           **reuse.latency_rows_from(lat), "tenths_ms": tenths(lat), "trend": trend(lat)}
    if truth_at is not None:
        scores, kept = [], {}
        for a in played.answers:
            m = a.mask
            scores.append(dice(m, truth_at(position(a.index))))
            if len(kept) < FLICKER_ANSWERS:
                kept[a.index] = m
        out.update(summary(scores, "dice_vs_truth"))
        if matrix_at is not None:
            out.update(flicker_summary(flicker(kept, lambda i: matrix_at(position(i)))))
    return out


def _why_counts(played: Played) -> dict:
    out: dict[str, int] = {}
    for a in played.answers:
        if a.why:
            out[a.why] = out.get(a.why, 0) + 1
    return out


def clip_row(predictor, frames: list[np.ndarray], name: str, box, n: int, fps: float) -> dict:
    """A fixed box (as the standard benchmark's streams), frames bounced to n."""
    position = reuse.bounce(len(frames))
    played = play(predictor, lambda i: frames[position(i)], n, fps, np.asarray(box, np.float32)[None])
    return row(played, name)


def truth_row(predictor, clip: Clip, n: int, fps: float) -> dict:
    """Tracking from the first true box, as the truth rows do, bounced to n; Dice vs truth."""
    position = reuse.bounce(len(clip))
    played = play(predictor, lambda i: clip.frames[position(i)], n, fps, clip.box0[None], track=True)
    return row(played, clip.name, truth_at=lambda p: clip.truths[p], matrix_at=clip.matrix, position=position)


def run(predictor, data: Path, clips: list[Clip], n: int, say=lambda s: None, every: bool = False) -> list[dict]:
    """The standard shared clips (every shared moving clip with `every`) at their own rate
    (30 fps where a clip has none), then the first ground-truth clip of each kind at 30 and
    60 fps."""
    rows = []
    for rel in (reuse.SHARED_CLIPS if every else STANDARD_CLIPS):
        path = data / rel
        box = reuse.SHARED_CLIPS.get(rel)
        if not path.is_file() or box is None:
            continue
        frames, fps = read_clip(path)
        say(f"real-time {path.name}: {n} frames at {fps:g} fps")
        rows.append(clip_row(predictor, frames, path.name, box, n, fps))
        say(_line(rows[-1]))
    seen = set()
    for clip in clips:
        kind = clip.name.split(":")[0]
        if kind in seen:
            continue
        seen.add(kind)
        for fps in (30.0, 60.0):
            say(f"real-time {clip.name}: {n} frames at {fps:g} fps (truth known)")
            rows.append(truth_row(predictor, clip, n, fps))
            say(_line(rows[-1]))
    return rows


def _line(r: dict) -> str:
    return (f"  {r['answered']} of {r['frames']} answered ({r['answered_share_after_first']} after the first), "
            f"{r['dropped']} dropped, capture-to-mask {r['capture_to_mask_ms']}, {r['embeddings_per_s']} embeddings/s"
            + (f", Dice vs truth {r['dice_vs_truth_mean']}" if "dice_vs_truth_mean" in r else ""))
