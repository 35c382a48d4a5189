"""Markdown for a ground-truth report (bench/truth_run.py): its machine (CPU flags and load
included), the targets of issue 24 with verdicts, then Dice vs truth per clip and mode,
tracking on real annotated video and the long real-time rows."""

from __future__ import annotations

from pathlib import Path

from medsam_edge.bench.report import contention_note, load_text

# Issue 24's targets.
ANSWERED_30, ANSWERED_60 = 0.99, 0.95
P99_MS = 50.0
REALTIME_GAP, REUSE_GAP, REUSE_RATE = 0.03, 0.01, 0.5
TRACK_GAP = 0.05


def _f(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else "met" if ok else "not met"


def _backend(b) -> str:
    if isinstance(b, dict):
        return " ".join(str(b[k]) for k in ("backend", "precision", "device") if b.get(k))
    return str(b)


def header(report: dict, heading: str) -> list[str]:
    m = report.get("model") or {}
    mach = report.get("machine") or {}
    s = report.get("settings") or {}
    note = contention_note(report)
    return [f"{heading} {m.get('model_id', '?')}: ground truth, tracking and real-time rows", "",
            f"- command: `{report.get('command', '')}`",
            f"- date: {mach.get('date', '?')}; wall time {report.get('wall_s', '?')} s; backend {_backend(report.get('backend'))}",
            f"- machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, {mach.get('memory_gb', '?')} GB; "
            f"{load_text(report)}",
            f"- CPU flags: {' '.join(mach.get('cpu_flags') or []) or 'not recorded'}",
            f"- ground-truth clips: {s.get('per_set')} per image set, {s.get('clip_frames')} frames each; real-time "
            f"rows {s.get('long_frames')} frames each"] + ([f"- note: {note}"] if note else [])


def target_rows(report: dict) -> list[str]:
    """Issue 24's targets as `| target | measured | verdict |` lines."""
    out = []
    for rt in report.get("realtime_rows", []):
        goal = ANSWERED_30 if rt["fps"] <= 30 else ANSWERED_60
        share = rt.get("answered_share_after_first")
        p99 = (rt.get("capture_to_mask_ms") or {}).get("p99")
        tenths = [t.get("p99") for t in rt.get("tenths_ms") or []]
        ok = None if share is None else share >= goal and (rt["fps"] > 30 or (p99 is not None and p99 <= P99_MS))
        out.append(f"| real-time {rt['clip']} at {rt['fps']:g} fps: >= {goal:.0%} answered after the first"
                   + (f", capture-to-mask p99 <= {P99_MS:g} ms flat" if rt["fps"] <= 30 else "")
                   + f" | {_f(share, '.1%')} answered ({rt.get('answered_after_first_answer')} of the "
                   f"{rt.get('frames_after_first_answer')} frames after the first answer; {rt['answered']} of "
                   f"{rt['frames']} in all, {rt['dropped']} dropped); "
                   f"p99 {_f(p99, '.1f')} ms, per tenth {', '.join(_f(t, '.0f') for t in tenths)} | {_verdict(ok)} |")
    for c in report.get("truth_clips", []):
        rows = {r["mode"]: r for r in c["rows"]}
        name = c["clip"]["name"]
        reuse = rows.get("deterministic reuse")
        if reuse and reuse.get("dice_gap_to_ceiling") is not None:
            ok = reuse["dice_gap_to_ceiling"] <= REUSE_GAP and reuse["reuse_rate"] >= REUSE_RATE
            out.append(f"| {name}: deterministic reuse within {REUSE_GAP} of the ceiling at >= {REUSE_RATE:.0%} reuse "
                       f"| gap {reuse['dice_gap_to_ceiling']:.4f} at {reuse['reuse_rate']:.0%} reuse | {_verdict(ok)} |")
        for mode, r in rows.items():
            if mode.startswith("real-time") and r.get("dice_gap_to_ceiling") is not None:
                out.append(f"| {name}: {mode} Dice vs truth within {REALTIME_GAP} of the ceiling | gap "
                           f"{r['dice_gap_to_ceiling']:.4f} (real time {_f(r['dice_mean'])}, ceiling "
                           f"{_f(rows['fresh every frame']['dice_mean'])})"
                           f" | {_verdict(r['dice_gap_to_ceiling'] <= REALTIME_GAP)} |")
    for seq in report.get("tracking", []):
        if seq.get("tracker_loss") is None:
            continue
        track = seq["rows"][0]
        lost = track.get("lost_reported_in_view", 0) + track.get("frames_below_lost_dice_in_view", 0)
        carried = next((r for r in seq["rows"] if "carried" in r["prompt"]), None)
        bound = "" if carried is None or carried["dice_mean"] is None else \
            f"; the truth one frame late, carried by the motion: {carried['dice_mean']:.4f}"
        out.append(f"| tracking {seq['sequence']}: within {TRACK_GAP} of the truth-box Dice, no lost track in view | "
                   f"gap {seq['tracker_loss']:.4f}; lost reported on {track.get('lost_reported_in_view')} frames, "
                   f"Dice < 0.1 on {track.get('frames_below_lost_dice_in_view')}{bound} | "
                   f"{_verdict(seq['tracker_loss'] <= TRACK_GAP and lost == 0)} |")
    return out


def truth_table(report: dict) -> list[str]:
    clips = report.get("truth_clips", [])
    if not clips:
        return []
    out = ["Dice against the truth on clips with known motion (tracking from the first frame's true box; flicker: "
           "1 - Dice of consecutive answers after moving the earlier by the true motion; the truth's own flicker "
           "is interpolation only):", "",
           "| clip | mode | answered | Dice vs truth mean / p5 / min | gap to ceiling | flicker mean / p95 | reuse "
           "| masks/s | how made | lost |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in clips:
        name = c["clip"]["name"]
        tf = c.get("truth_flicker") or {}
        for r in c["rows"]:
            made = ", ".join(f"{k} {v}" for k, v in (r.get("made") or {}).items()) or "-"
            reuse = r.get("reuse_rate")
            out.append(f"| {name} | {r['mode']} | {r['answered']} / {r['frames']} | {_f(r['dice_mean'])} / "
                       f"{_f(r['dice_p5'])} / {_f(r['dice_min'])} | {_f(r.get('dice_gap_to_ceiling'))} | "
                       f"{_f(r['flicker_mean'])} / {_f(r['flicker_p95'])} | {_f(reuse, '.0%')} | "
                       f"{_f(r.get('masks_per_s'), '.1f')} | {made} | {r.get('lost', '-')} |")
        out.append(f"| {name} | the truth itself | {c['clip']['frames']} | 1 | 0 | {_f(tf.get('flicker_mean'))} / "
                   f"{_f(tf.get('flicker_p95'))} | - | - | - | - |")
    return out


def tracking_table(report: dict) -> list[str]:
    seqs = report.get("tracking", [])
    if not seqs:
        return []
    out = ["Tracking on real annotated video (every frame has an expert mask). The last two rows of a sequence "
           "are bounds: the previous frame's truth as a box is what a tracker exactly one frame late gets, and "
           "carried by the motion the runtime finds between the frames, what one that follows that motion gets; "
           "where frames were sampled far apart in time they sit far under the truth box's row.", "",
           "| sequence | prompt | frames | Dice vs truth mean / p5 / min | frames with Dice < 0.1 in view "
           "| lost reported in view |", "|---|---|---|---|---|---|"]
    for seq in seqs:
        for r in seq.get("rows", []):
            out.append(f"| {seq['sequence']} | {r['prompt']} | {r['frames']} | {_f(r['dice_mean'])} / "
                       f"{_f(r['dice_p5'])} / {_f(r['dice_min'])} | {r['frames_below_lost_dice_in_view']} | "
                       f"{r.get('lost_reported_in_view', '-')} |")
    return out


def realtime_table(report: dict) -> list[str]:
    rows = report.get("realtime_rows", [])
    if not rows:
        return []
    out = ["Real-time rows (frames submitted at the capture rate; clips played forward and back; a fixed box on the "
           "real clips, tracking from the true box on the ground-truth ones):", "",
           "| clip | fps | frames | answered after first | dropped | capture-to-mask p50 / p99 ms | p99 by tenths ms "
           "| fitted rise ms | embeddings/s | embedding age median, frames | how made | Dice vs truth mean / min |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r.get("capture_to_mask_ms") or {}
        tenths = ", ".join(_f(t.get("p99"), ".0f") for t in r.get("tenths_ms") or [])
        made = ", ".join(f"{k} {v}" for k, v in (r.get("made") or {}).items()) or "-"
        out.append(f"| {r['clip']} | {r['fps']:g} | {r['frames']} | {_f(r.get('answered_share_after_first'), '.1%')} "
                   f"| {r['dropped']} | {_f(lat.get('p50'), '.1f')} / {_f(lat.get('p99'), '.1f')} | {tenths or '-'} | "
                   f"{_f((r.get('trend') or {}).get('rise_ms'), '.1f')} | {_f(r.get('embeddings_per_s'), '.2f')} | "
                   f"{_f(r.get('embedding_age_frames_median'), '.0f')} | {made} | "
                   f"{_f(r.get('dice_vs_truth_mean'))} / {_f(r.get('dice_vs_truth_min'))} |")
    return out


def render(report: dict, heading: str = "##") -> str:
    lines = header(report, heading)
    targets = target_rows(report)
    if targets:
        lines += ["", "| target (issue 24) | measured | verdict |", "|---|---|---|", *targets]
    for table in (truth_table(report), tracking_table(report), realtime_table(report)):
        if table:
            lines += ["", *table]
    return "\n".join(lines) + "\n"


def title(report: dict) -> str:
    where = Path(report["out"]).name if report.get("out") else "?"
    return f"{(report.get('model') or {}).get('model_id', '?')} ({(report.get('settings') or {}).get('mode')}, {where})"
