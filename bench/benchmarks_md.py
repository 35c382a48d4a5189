"""Write BENCHMARKS.md from saved `medsam-edge bench` reports: nothing in it is typed by hand.

    python bench/benchmarks_md.py out/bench/lite/report.json out/bench/vitb/report.json --out BENCHMARKS.md

Each report keeps its own machine, date and command; the targets section at the top is
computed from the reports' numbers against the targets of issue 6.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

STREAM_FPS_TARGET = 15.0
LITE_FRESH_TARGET_S = 0.25
INT8_SPEEDUP_TARGET = 2.0


def render(reports: list[dict], command: str) -> str:
    from medsam_edge.bench.report import markdown

    lines = ["# Benchmarks", "",
             f"Generated on {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `{command}` from the reports listed below "
             "(each with its own machine, date and command). Nothing here is typed by hand: regenerate with "
             "`python -m medsam_edge.bench.standard` (measures, then runs this script) or this script alone on saved reports.",
             "", "## Targets (issue 6)", "", "| target | measured | verdict | report |", "|---|---|---|---|"]
    lines += targets(reports)
    lines += repeatability(reports)
    lines += ["", "## Duration", "", "| report | this run, s | a full (not --quick) run, estimated from it, s |",
              "|---|---|---|"]
    for r in reports:
        lines.append(f"| {_title(r)} | {r.get('wall_s')} | {r.get('estimate_full_s') or '-'} |")
    for r in reports:
        lines += ["", markdown(r, heading="##")]
    return "\n".join(lines) + "\n"


def targets(reports: list[dict]) -> list[str]:
    out = []
    for rep in reports:
        model = (rep.get("model") or {}).get("model_id")
        rows = {r["name"]: r for r in rep.get("rows", []) if r.get("latency_ms")}
        ref = rows.get("reference")
        if model == "medsam_vit_b" and ref:
            for name in ("onnxruntime-cpu-fp32", "onnxruntime-cpu-int8", "onnxruntime-cpu-int8dyn"):
                r = rows.get(name)
                if r is None:
                    out.append(f"| ViT-B {name} vs PyTorch FP32 | not measured (no such row) | - | {_title(rep)} |")
                    continue
                sp = r["speedup_vs_reference"]
                goal = 1.0 if name.endswith("fp32") else INT8_SPEEDUP_TARGET
                out.append(f"| ViT-B encoder {name} vs PyTorch FP32: faster{'' if goal == 1 else ' by >= 2x'} "
                           f"| encoder {_sp(sp['encode'])}, end to end {_sp(sp['e2e'])} "
                           f"| {_verdict(sp['encode']['median'] > goal)} | {_title(rep)} |")
        if model == "lite_medsam":
            for name, r in rows.items():
                if name == "reference":
                    continue
                p50 = r["latency_ms"]["e2e"]["p50"] / 1e3
                out.append(f"| LiteMedSAM fresh-embedding frame <= {LITE_FRESH_TARGET_S} s ({name}) "
                           f"| p50 {p50:.3f} s (p99 {r['latency_ms']['e2e']['p99'] / 1e3:.3f} s, encoder "
                           f"{r['latency_ms']['encode']['p50'] / 1e3:.3f} s) | {_verdict(p50 <= LITE_FRESH_TARGET_S)} "
                           f"| {_title(rep)} |")
        for st in rep.get("streaming", []):
            for row in st["rows"]:
                if row["mode"] == "reuse off":
                    continue
                out.append(f"| masks >= {STREAM_FPS_TARGET:g} fps, {row['mode']}, {Path(st['clip']).name} "
                           f"| {row['fps']:.1f} fps (reuse {row['reuse_rate']:.2f}, Dice vs fresh {row['dice_mean']:.4f}) "
                           f"| {_verdict(row['fps'] >= STREAM_FPS_TARGET)} | {_title(rep)} |")
        lr = rep.get("long_run")
        if lr and lr.get("tenths_ms"):
            tenths = [t["p99"] for t in lr["tenths_ms"]]
            tr = lr.get("trend") or {}
            out.append(f"| capture-to-mask flat over a {lr['frames_requested']}-frame real-time run "
                       f"({Path(lr['clip']).name}, threads encoder/decoder {lr.get('threads') or 'default'}) | fitted rise after "
                       f"start-up {tr.get('rise_ms')} ms on a median of {tr.get('median_ms')} ms; p99 per tenth "
                       f"{', '.join(map(str, tenths))} ms; {lr['frames']} answered, {lr['dropped']} dropped, "
                       f"{lr['fps']:.1f} fps | {_verdict(flat(tr))} | {_title(rep)} |")
    return out


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
                out.append(f"| {_model(a)} {name} {stage} speed-up vs reference | {_sp(sa)} / {_sp(sb)} "
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


def _sp(sp: dict) -> str:
    return f"{sp['median']:.2f}x [{sp['p5']:.2f}-{sp['p95']:.2f}]" if sp.get("n") else "-"


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
