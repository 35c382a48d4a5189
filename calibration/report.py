"""The fidelity report: per precision, masks and embeddings against the FP32 reference and
against ground truth, on held-out real frames; written into the model directory.

fidelity.json is the record, fidelity.md the same for people; both are written atomically,
and the manifest's "precision" key says how each file was made.
"""

from __future__ import annotations

import datetime

from medsam_edge.atomic import write_json, write_text
from medsam_edge.manifest import ModelDir

from .evaluate import TARGETS, Scores, meets

JSON_FILE = "fidelity.json"
MD_FILE = "fidelity.md"


def build(md: ModelDir, reference: str, scores: dict[str, Scores], files: dict[str, dict],
          truth_ceiling: Scores, frames: dict, latency: dict | None, targets: dict | None = None) -> dict:
    """scores/files: per precision ("fp32", "fp16", "int8", "int8dyn")."""
    rows = {}
    for p, s in scores.items():
        summary = s.summary()
        target = (targets or TARGETS).get("int8" if p.startswith("int8") else p)
        rows[p] = {
            **files.get(p, {}),
            **summary,
            "target": target,
            "meets_target": meets(summary["dice"], target) if target else None,
        }
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
    lines = [
        f"# Fidelity of reduced precision: {r['model_id']}",
        "",
        f"Reference: {r['reference']}. Held-out frames: {fr.get('holdout')} "
        f"({fr.get('boxes')} boxes, {fr.get('truth_boxes')} with ground truth) from {len(fr.get('sources', []))} "
        "source(s); none of them was used for calibration or the sensitivity search.",
        "",
        "| precision | encoder | decoder | Dice mean | Dice p5 | Dice worst | IoU mean | emb. cosine mean | "
        "cosine worst | GT Dice mean | GT Dice p5 | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, row in r["precisions"].items():
        d, c, t = row["dice"], row["embedding_cosine"], row["truth"]["dice"]
        ok = {True: "met", False: "**missed**", None: "–"}[row["meets_target"]]
        lines.append(
            f"| {p} | {row.get('encoder', '')} | {row.get('decoder', '')} | {_f(d['mean'])} | {_f(d['p5'])} | "
            f"{_f(d['worst'])} | {_f(row['iou']['mean'])} | {_f(c['mean'], 6)} | {_f(c['worst'], 6)} | "
            f"{_f(t['mean'])} | {_f(t['p5'])} | {ok} |"
        )
    ceil = r["reference_vs_truth"]["dice"]
    lines += ["", f"Reference against ground truth: Dice mean {_f(ceil['mean'])}, p5 {_f(ceil['p5'])}, "
                  f"worst {_f(ceil['worst'])} (the ceiling for every row's GT columns).", ""]
    targets = ", ".join(f"{k}: " + ", ".join(f"Dice {s} ≥ {v}" for s, v in t.items())
                        for k, t in _targets(r).items())
    lines += [f"Targets (mask Dice against the reference): {targets}.", ""]
    lat = r.get("latency")
    if lat:
        lines += ["## Encoder latency, onnxruntime CPU, same run", "",
                  f"{lat['rounds']} rounds, precisions interleaved, threads: {lat['threads']}.", "",
                  "| precision | median ms | p90 ms | speed-up vs FP32 |", "|---|---|---|---|"]
        for p, v in lat["encoder"].items():
            lines.append(f"| {p} | {v['median_ms']:.0f} | {v['p90_ms']:.0f} | {_f(v['speedup_vs_fp32'], 2)}× |")
        lines.append("")
    return "\n".join(lines)


def _targets(r: dict) -> dict:
    return {p: row["target"] for p, row in r["precisions"].items() if row.get("target")}


def print_summary(r: dict, stream=None) -> None:
    """The table the command prints: the Markdown report without its heading."""
    import sys

    print(markdown(r).split("\n", 2)[2], file=stream or sys.stdout)

