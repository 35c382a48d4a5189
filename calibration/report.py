"""The fidelity report: per precision, masks and embeddings against the FP32 reference and
against ground truth, on held-out real frames; written into the model directory.

fidelity.json is the record, fidelity.md the same for people; both are written atomically,
and the manifest's "precision" key says how each file was made.
"""

from __future__ import annotations

import datetime

from medsam_edge.atomic import write_json, write_text
from medsam_edge.manifest import ModelDir

from .evaluate import TARGETS, Scores, meets_summary

JSON_FILE = "fidelity.json"
MD_FILE = "fidelity.md"


def build(md: ModelDir, reference: str, scores: dict[str, dict], files: dict[str, dict],
          truth_ceiling: Scores, frames: dict, latency: dict | None, targets: dict | None = None) -> dict:
    """scores: {precision: {backend: Scores, or the reason it did not run}}; files: per precision.

    Each precision's row carries every backend's figures under "backends" and, at its top
    level, the first backend's that ran (named in "backend"), so a figure always says
    whose arithmetic produced it.
    """
    rows = {}
    for p, by_backend in scores.items():
        target = (targets or TARGETS).get("int8" if p.startswith("int8") else "fp16" if p == "bf16" else p)
        backends = {}
        for b, s in by_backend.items():
            if isinstance(s, str):
                backends[b] = {"not_run": s}
                continue
            summary = s.summary()
            backends[b] = {**summary, "meets_target": meets_summary(summary, target) if target else None}
        ran = [b for b, v in backends.items() if "not_run" not in v]
        primary = backends[ran[0]] if ran else {}
        rows[p] = {**files.get(p, {}), "backend": ran[0] if ran else None, **primary, "target": target,
                   "meets_target": primary.get("meets_target"), "backends": backends}
    return {
        "model_id": md.model_id,
        "reference": reference,
        "frames": frames,
        "precisions": rows,
        "reference_vs_truth": truth_ceiling.summary()["truth"],
        "latency": latency,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write(md: ModelDir, report: dict, precision_record: dict) -> None:
    """fidelity.json, fidelity.md, and manifest.json's "precision" key (each atomically)."""
    write_json(md.path / JSON_FILE, report)
    write_text(md.path / MD_FILE, markdown(report))
    md.manifest["precision"] = {**precision_record, "report": JSON_FILE}
    md.save()


def _f(x, nd: int = 4) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(r: dict) -> str:
    fr = r["frames"]
    unseen = fr.get("holdout_sources_unseen")
    where = ("from sources the calibration never saw" if unseen else
             "from the calibration's own source(s) (give several sources, or --eval, for unseen ones)")
    lines = [
        f"# Fidelity of reduced precision: {r['model_id']}",
        "",
        f"Reference: {r['reference']}. Held-out frames: {fr.get('holdout')} "
        f"({fr.get('boxes')} boxes, {fr.get('truth_boxes')} with ground truth) from {len(fr.get('sources', []))} "
        f"source(s), {where}; none of them was used for calibration or the sensitivity search. "
        "Each row names the backend whose arithmetic produced it.",
        "",
        "| precision | backend | encoder | decoder | Dice mean | Dice p5 | Dice worst | IoU mean | emb. cosine mean | "
        "cosine worst | GT Dice mean | GT Dice p5 | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, row in r["precisions"].items():
        for b, v in row["backends"].items():
            head = f"| {p} | {b} | {row.get('encoder', '')} | {row.get('decoder', '')} |"
            if "not_run" in v:
                lines.append(f"{head} not run here: {v['not_run']} |" + " |" * 8)
                continue
            d, c, t = v["dice"], v["embedding_cosine"], v["truth"]["dice"]
            ok = {True: "met", False: "**missed**", None: "–"}[v["meets_target"]]
            lines.append(
                f"{head} {_f(d['mean'])} | {_f(d['p5'])} | {_f(d['worst'])} | {_f(v['iou']['mean'])} | "
                f"{_f(c['mean'], 6)} | {_f(c['worst'], 6)} | {_f(t['mean'])} | {_f(t['p5'])} | {ok} |"
            )
    lines += _by_source(r)
    ceil = r["reference_vs_truth"]["dice"]
    lines += ["", f"Reference against ground truth: Dice mean {_f(ceil['mean'])}, p5 {_f(ceil['p5'])}, "
                  f"worst {_f(ceil['worst'])} (the ceiling for every row's GT columns).", ""]
    targets = ", ".join(f"{k}: " + ", ".join(f"Dice {s} ≥ {v}" for s, v in t.items())
                        for k, t in _targets(r).items())
    lines += [f"Targets (mask Dice against the reference): {targets}.", ""]
    plan = r.get("precision_plan")
    if plan:
        gpus = sorted({g for p in plan.values() for g in p["predicted_ms"]})
        lines += ["## Precision plan (static: FLOPs per type as TensorRT's strong typing runs each file)", "",
                  "| file | GFLOP | INT8 | FP16 | FP32 | " + " | ".join(f"predicted {g} ms" for g in gpus) + " |",
                  "|---|---|---|---|---|" + "---|" * len(gpus)]
        for name, p in plan.items():
            sh = p["share"]
            lines.append(f"| {name} | {p['gflops']} | {100 * sh.get('INT8', 0):.1f}% | {100 * sh.get('FP16', 0):.1f}% | "
                         f"{100 * sh.get('FP32', 0):.1f}% | " + " | ".join(f"{p['predicted_ms'].get(g, 0):.3g}"
                                                                        for g in gpus) + " |")
        lines.append("")
    lat = r.get("latency")
    if lat:
        lines += ["## Encoder latency on each CPU backend, same run", "",
                  f"{lat['rounds']} rounds, precisions interleaved within a backend, threads: {lat['threads']}.", "",
                  "| precision @ backend | median ms | p90 ms | vs its backend's FP32 | vs onnxruntime FP32 |",
                  "|---|---|---|---|---|"]
        for k, v in lat["encoder"].items():
            lines.append(f"| {k} | {v['median_ms']:.0f} | {v['p90_ms']:.0f} | {_f(v['speedup_vs_fp32'], 2)}× | "
                         f"{_f(v['speedup_vs_onnxruntime_fp32'], 2)}× |")
        lines.append("")
    return "\n".join(lines)


def _by_source(r: dict) -> list[str]:
    """Mean (worst) Dice per held-out source: a target is met only where every source's
    mean meets its mean bound."""
    rows = [(f"{p} @ {b}", v["dice_by_source"]) for p, row in r["precisions"].items()
            for b, v in row["backends"].items() if v.get("dice_by_source")]
    sources = sorted({s for _, by in rows for s in by})
    if len(sources) < 2:
        return []
    lines = ["", "Dice mean (worst) per held-out source (a target is met only where every source's mean "
                 "meets its mean bound):", "",
             "| precision @ backend | " + " | ".join(s.rsplit("/", 1)[-1] for s in sources) + " |",
             "|---|" + "---|" * len(sources)]
    for name, by in rows:
        cells = [f"{_f(by[s]['mean'])} ({_f(by[s]['worst'], 3)})" if s in by else "–" for s in sources]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _targets(r: dict) -> dict:
    return {p: row["target"] for p, row in r["precisions"].items() if row.get("target")}


def print_summary(r: dict, stream=None) -> None:
    """The table the command prints: the Markdown report without its heading."""
    import sys

    print(markdown(r).split("\n", 2)[2], file=stream or sys.stdout)

