"""Tracking on real annotated video: `--track` from the first frame's true box, judged against
the expert mask of every frame, beside two bounds on the same frames and embeddings:
- truth box: each frame prompted with its own true mask's box (what a perfect tracker gives;
  the gap to it is the tracker's loss);
- previous-frame box: each frame prompted with the previous frame's true box (a tracker
  that is exactly one frame late: the floor a box carried forward should beat);
- previous-frame box carried by the motion: that box moved by the motion the runtime's
  estimator finds between the two frames, where it finds one (runtime.follow's links). A
  tracker that carries a box from frame to frame with that motion, and knows the truth on
  the frame before, gets this far: on frames sampled far apart in time (the CVC-ClinicDB
  sequences) it is the ceiling, and the truth box's row is out of any tracker's reach.
The sequences are folders of frames with a mask each (CVC-ClinicDB in ../shared/data).

    python -m medsam_edge.bench.tracking models/lite_medsam --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from medsam_edge.bench.clips import box_of
from medsam_edge.bench.truth import summary
from medsam_edge.metrics import dice
from medsam_edge.runtime.follow import LINK_MIN_INLIERS, as_motion, homogeneous, invert
from medsam_edge.runtime.motion import MotionEstimator
from medsam_edge.runtime.prompts import Prompt
from medsam_edge.runtime.small_frame import SmallFrame

SEQUENCES = "endoscopy/cvc_clinicdb_sequences"
# A mask below this Dice against a truth in view counts as a track lost in fact, whatever the tracker says.
LOST_DICE = 0.1


def load_sequence(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(RGB frames, bool masks) of folder/images/* and folder/masks/* with the same names."""
    frames, masks = [], []
    for img_path in sorted((folder / "images").iterdir()):
        mask_path = folder / "masks" / img_path.name
        bgr = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        grey = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) if mask_path.is_file() else None
        if bgr is None or grey is None or grey.shape != bgr.shape[:2]:
            continue
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        masks.append(grey > 127)
    return frames, masks


def sequences(data: Path) -> list[Path]:
    root = data / SEQUENCES
    return sorted(p for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []


def track_sequence(predictor, frames: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """The three rows for one sequence, through the runtime's public API."""
    first = next((i for i, t in enumerate(truths) if t.any()), None)
    if first is None:
        return {"frames": len(frames), "error": "no frame has a mask"}
    tracked, lost_flags = {}, {}
    t0 = time.perf_counter()
    with predictor.session(prompts=box_of(truths[first])[None], track=True, reuse="off") as s:
        for i in range(first, len(frames)):
            r = s.process(frames[i])
            tracked[i] = r.masks[0] if len(r.masks) else np.zeros(truths[i].shape, bool)
            lost_flags[i] = bool(r.lost and r.lost[0])
    track_s = time.perf_counter() - t0
    by_truth, by_previous, by_carried = {}, {}, {}
    previous = box_of(truths[first])
    estimator, small = MotionEstimator(), SmallFrame.of(frames[first])
    for i in range(first, len(frames)):
        box = box_of(truths[i])
        before, small = small, SmallFrame.of(frames[i])
        predictor.set_image(frames[i])
        if box is not None:
            by_truth[i] = predictor.predict(boxes=box[None])[0][0]
        if previous is not None:
            by_previous[i] = predictor.predict(boxes=previous[None])[0][0]
            carried = carry(estimator, before, small, previous) if i > first else previous
            by_carried[i] = by_previous[i] if carried is previous else predictor.predict(boxes=carried[None])[0][0]
        previous = box if box is not None else previous

    def row(name: str, masks: dict) -> dict:
        scores = {i: dice(m, truths[i]) for i, m in masks.items()}
        in_view = [i for i in scores if truths[i].any()]
        return {"prompt": name, "frames": len(scores), **summary([scores[i] for i in sorted(scores)], "dice"),
                "frames_below_lost_dice_in_view": sum(scores[i] < LOST_DICE for i in in_view),
                "dice_per_frame": [round(scores[i], 4) for i in sorted(scores)]}

    in_view = [i for i in lost_flags if truths[i].any()]
    rows = [{**row("track from the first frame's box", tracked), "seconds": round(track_s, 2),
             "lost_reported_in_view": sum(lost_flags[i] for i in in_view)},
            row("truth box of each frame", by_truth), row("previous frame's truth box", by_previous),
            row("previous frame's truth box, carried by the motion", by_carried)]
    gap = None if rows[0]["dice_mean"] is None or rows[1]["dice_mean"] is None else \
        round(rows[1]["dice_mean"] - rows[0]["dice_mean"], 4)
    return {"frames": len(frames), "first_annotated": first, "tracker_loss": gap, "rows": rows}


def carry(estimator: MotionEstimator, before: SmallFrame, now: SmallFrame, box: np.ndarray) -> np.ndarray:
    """`box` of the frame `before`, moved to the frame `now` by the motion found between them
    (as a link of runtime.follow's chain is found); `box` itself where none is."""
    motion = estimator.estimate(before, now, [Prompt.of(box)], keep_small=True, min_inliers=LINK_MIN_INLIERS)
    if not motion.applied or motion.still:
        return box
    # The estimate maps points of `now` to `before`; the box goes the other way.
    forward = as_motion([invert(homogeneous(motion.prompts[0].matrix))], [])
    return forward.map_prompts([Prompt.of(box)], now.original_hw)[0].box


def run(predictor, data: Path, say=lambda s: None) -> list[dict]:
    out = []
    for folder in sequences(data):
        frames, truths = load_sequence(folder)
        say(f"tracking {folder.name}: {len(frames)} annotated frames")
        out.append({"sequence": folder.name, "path": str(folder), **track_sequence(predictor, frames, truths)})
    return out


def main(argv: list[str] | None = None) -> int:
    from medsam_edge.runtime import Predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args(argv)
    with Predictor(args.model_dir, backend=args.backend) as p:
        result = run(p, args.data, say=lambda s: print(s, file=sys.stderr))
    for seq in result:
        for r in seq.get("rows", []):
            r.pop("dice_per_frame", None)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
