"""Write BENCHMARKS.md from saved `medsam-edge bench` reports: nothing in it is typed by hand.

    python -m medsam_edge.bench.benchmarks_md out/bench/lite/report.json out/bench/vitb/report.json --out BENCHMARKS.md

Each report keeps its own machine, date and command; the targets section at the top is
computed from the reports' numbers against the targets of issues 10 and 17.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from medsam_edge.bench import truth_md
from medsam_edge.bench.cells import ratio


# Issue 10's CPU targets, against the PyTorch FP32 reference measured in the same run.
VITB_ENCODER_SPEEDUP = 8.0
LITE_E2E_SPEEDUP, LITE_FRESH_S = 5.0, 0.2
LITE_DECODER_SPEEDUP, LITE_DECODER_1T_MS = 5.0, 30.0
REALTIME_MASKS_PER_S = 25.0
# Fidelity targets per precision class (mask Dice against the reference), issue 4's.
FIDELITY = {"fp": {"dice_mean": 0.995, "dice_min": 0.98}, "int8": {"dice_mean": 0.97, "dice_p5": 0.93}}
# Issue 17's reuse targets: Dice vs fresh-embedding masks of the same frames.
REUSE_DICE, REUSE_RATE, REALTIME_DICE = 0.98, 0.5, 0.95


def meets_fidelity(row: dict) -> bool:
    """The row's masks against the reference meet its precision's target (fp32/fp16/bf16: the
    FP16 target; int8/int8dyn: the INT8 one)."""
    f = row.get("fidelity") or {}
    goal = FIDELITY["int8" if str(row.get("precision", "")).startswith("int8") else "fp"]
    return bool(f.get("masks")) and all(f.get(k) is not None and f[k] >= v for k, v in goal.items())


def render(reports: list[dict], command: str) -> str:
    from medsam_edge.bench.report import markdown

    lines = ["# Benchmarks", "",
             f"Generated on {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `{command}` from the reports listed below "
             "(each with its own machine, date and command). Nothing here is typed by hand: regenerate with "
             "`python -m medsam_edge.bench.standard` (measures, then runs this script) or this script alone on saved reports.",
             "", "## Targets (issues 10 and 17)", "", "| target | measured | verdict | report |", "|---|---|---|---|"]
    lines += targets(reports)
    lines += repeatability(reports)
    lines += truth_targets(reports)
    lines += ["", "## Duration", "", "| report | this run, s | a full (not --quick) run, estimated from it, s |",
              "|---|---|---|"]
    for r in reports:
        lines.append(f"| {_title(r)} | {r.get('wall_s')} | {r.get('estimate_full_s') or '-'} |")
    for r in reports:
        lines += ["", truth_md.render(r, heading="##") if r.get("kind") == "truth" else markdown(r, heading="##")]
    return "\n".join(lines) + "\n"


def truth_targets(reports: list[dict]) -> list[str]:
    """Issue 24's targets from ground-truth reports (bench/truth_run.py), each with its report."""
    out = []
    for rep in reports:
        if rep.get("kind") == "truth":
            out += [f"{line} {_title(rep)} |" for line in truth_md.target_rows(rep)]
    if not out:
        return []
    return ["", "## Targets of issue 24 (ground truth, tracking, real time)", "",
            "| target | measured | verdict | report |", "|---|---|---|---|", *out]


def targets(reports: list[dict]) -> list[str]:
    out = []
    for rep in reports:
        model = (rep.get("model") or {}).get("model_id")
        rows = {r["name"]: r for r in rep.get("rows", []) if r.get("latency_ms") and r["name"] != "reference"}
        good = {n: r for n, r in rows.items() if meets_fidelity(r) and r.get("speedup_vs_reference")}
        threads = (rep.get("settings") or {}).get("threads") or "default"
        if model == "medsam_vit_b" and rows:
            best = max(good.values(), key=lambda r: r["speedup_vs_reference"]["encode"]["median"], default=None)
            out.append(_row(f"ViT-B encoder, fastest CPU row meeting fidelity, >= {VITB_ENCODER_SPEEDUP:g}x the "
                            "reference", best, lambda r: r["speedup_vs_reference"]["encode"]["median"]
                            >= VITB_ENCODER_SPEEDUP, lambda r: f"encoder {ratio(r['speedup_vs_reference']['encode'])}",
                            rep))
        if model == "lite_medsam" and rows:
            best = max(good.values(), key=lambda r: r["speedup_vs_reference"]["e2e"]["median"], default=None)
            out.append(_row(f"LiteMedSAM fresh-embedding frame, fastest row meeting fidelity: >= "
                            f"{LITE_E2E_SPEEDUP:g}x the reference and p50 < {LITE_FRESH_S:g} s", best,
                            lambda r: r["speedup_vs_reference"]["e2e"]["median"] >= LITE_E2E_SPEEDUP
                            and r["latency_ms"]["e2e"]["p50"] / 1e3 < LITE_FRESH_S,
                            lambda r: f"end to end {ratio(r['speedup_vs_reference']['e2e'])}, p50 "
                                      f"{r['latency_ms']['e2e']['p50'] / 1e3:.3f} s", rep))
            fastest = max(good.values(), key=lambda r: r["speedup_vs_reference"]["decode"]["median"], default=None)
            if threads == 1:
                out.append(_row(f"LiteMedSAM decoder <= {LITE_DECODER_1T_MS:g} ms on one thread", fastest,
                                lambda r: r["latency_ms"]["decode"]["p50"] <= LITE_DECODER_1T_MS,
                                lambda r: f"p50 {r['latency_ms']['decode']['p50']:.1f} ms", rep))
            else:
                out.append(_row(f"LiteMedSAM decoder >= {LITE_DECODER_SPEEDUP:g}x the reference's (threads "
                                f"{threads})", fastest, lambda r: r["speedup_vs_reference"]["decode"]["median"]
                                >= LITE_DECODER_SPEEDUP,
                                lambda r: f"{ratio(r['speedup_vs_reference']['decode'])}, p50 "
                                          f"{r['latency_ms']['decode']['p50']:.1f} ms", rep))
        for name, r in rows.items():
            if r.get("fidelity", {}).get("masks") and r["precision"] != "fp32":
                goal = FIDELITY["int8" if r["precision"].startswith("int8") else "fp"]
                f = r["fidelity"]
                out.append(f"| {_model(rep)} {name} fidelity: " + ", ".join(f"{k} >= {v}" for k, v in goal.items())
                           + f" | Dice mean {f['dice_mean']:.4f}, p5 {f['dice_p5']:.4f}, worst {f['dice_min']:.4f} "
                           f"({f['masks']} masks) | {_verdict(meets_fidelity(r))} | {_title(rep)} |")
        for st in rep.get("streaming", []):
            for row in st["rows"]:
                if row["mode"] == "reuse off":
                    continue
                clip = Path(st["clip"]).name
                if row["mode"].startswith("real-time"):
                    ok = row["dice_mean"] >= REALTIME_DICE
                    goal = f"Dice vs fresh >= {REALTIME_DICE}"
                else:
                    ok = row["dice_mean"] >= REUSE_DICE and row["reuse_rate"] >= REUSE_RATE
                    goal = f"Dice vs fresh >= {REUSE_DICE} with reuse >= {REUSE_RATE:.0%}"
                out.append(f"| {row['mode']}, {clip}: {goal} | Dice mean {row['dice_mean']:.4f} (min "
                           f"{row['dice_min']:.4f}), reuse {row['reuse_rate']:.2f}, {row['fps']:.1f} masks/s "
                           f"| {_verdict(ok)} | {_title(rep)} |")
        lr = rep.get("long_run")
        if lr and lr.get("tenths_ms"):
            tenths = [t["p99"] for t in lr["tenths_ms"]]
            tr = lr.get("trend") or {}
            out.append(f"| real-time, {lr['frames_requested']} frames of {Path(lr['clip']).name}: >= "
                       f"{REALTIME_MASKS_PER_S:g} masks/s, capture-to-mask p99 flat (threads encoder/decoder "
                       f"{lr.get('threads') or 'default'}) | {lr['fps']:.1f} masks/s; fitted rise after start-up "
                       f"{tr.get('rise_ms')} ms on a median of {tr.get('median_ms')} ms; p99 per tenth "
                       f"{', '.join(map(str, tenths))} ms; {lr['frames']} answered, {lr['dropped']} dropped "
                       f"| {_verdict(flat(tr) and lr['fps'] >= REALTIME_MASKS_PER_S)} | {_title(rep)} |")
    return out


def _row(goal: str, row: dict | None, ok, shown, rep: dict) -> str:
    if row is None:
        return f"| {goal} | no row meets the fidelity target | not met | {_title(rep)} |"
    return f"| {goal} | {row['name']}: {shown(row)} | {_verdict(ok(row))} | {_title(rep)} |"


def repeatability(reports: list[dict]) -> list[str]:
    """Runs of the same command side by side: does each run's median speed-up lie within
    the other run's spread (p5-p95 of its per-frame paired ratios)?"""
    by_cmd: dict[tuple, list[dict]] = {}
    for rep in reports:
        by_cmd.setdefault(_command_key(rep), []).append(rep)
    out = []
    for runs in by_cmd.values():
        if len(runs) < 2:
            continue
        a, b = runs[0], runs[1]
        ra, rb = _rows(a), _rows(b)
        for name in [n for n in ra if n in rb and n != "reference"]:
            for stage in ("encode", "e2e"):
                sa, sb = ra[name]["speedup_vs_reference"][stage], rb[name]["speedup_vs_reference"][stage]
                if not (sa.get("n") and sb.get("n")):
                    continue
                ok = within(sa, sb) and within(sb, sa)
                out.append(f"| {_model(a)} {name} {stage} speed-up vs reference | {ratio(sa)} / {ratio(sb)} "
                           f"| {_verdict(ok)} | {_title(a)}, {_title(b)} |")
    if not out:
        return []
    return ["", "## Repeatability (issue 6: two runs of the same command agree within their spread)", "",
            "| figure | run 1 / run 2, median [p5-p95] | verdict | reports |", "|---|---|---|---|", *out]


def within(x: dict, y: dict) -> bool:
    """x's median inside y's p5-p95 spread."""
    return y["p5"] <= x["median"] <= y["p95"]


def _command_key(rep: dict) -> tuple:
    """What makes two reports runs of the same command: the command with its --out removed."""
    cmd = shlex.split(rep.get("command") or "")
    if "--out" in cmd:
        k = cmd.index("--out")
        del cmd[k:k + 2]
    return tuple(cmd)


def _rows(rep: dict) -> dict:
    return {r["name"]: r for r in rep.get("rows", []) if r.get("latency_ms") and r.get("speedup_vs_reference")}


def _model(rep: dict) -> str:
    return (rep.get("model") or {}).get("model_id", "?")


def flat(tr: dict) -> bool:
    """Growing lag is a rising trend: the fitted rise after start-up under 10% of the median latency."""
    return bool(tr) and tr["rise_ms"] < 0.1 * tr["median_ms"]


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def _title(rep: dict) -> str:
    where = Path(rep["out"]).name if rep.get("out") else "?"
    return f"{(rep.get('model') or {}).get('model_id', '?')} ({(rep.get('settings') or {}).get('mode', '?')}, {where})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="report.json files written by medsam-edge bench")
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="default ./BENCHMARKS.md")
    args = ap.parse_args(argv)
    from medsam_edge.atomic import write_text
    reports = []
    for p in args.reports:
        try:
            reports.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            print(f"benchmarks_md: {p}: unreadable report ({e})", file=sys.stderr)
            return 2
    command = shlex.join(["python", "-m", "medsam_edge.bench.benchmarks_md", *map(str, args.reports)])
    write_text(args.out, render(reports, command))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
