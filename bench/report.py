"""From measured samples to the report: per-row summaries (JSON) and Markdown tables.

Everything in the Markdown is rendered from the JSON, so BENCHMARKS.md can be
regenerated from a saved report without measuring again.
"""

from __future__ import annotations

from medsam_edge.bench import fidelity, flops
from medsam_edge.bench.cells import number, ratio
from medsam_edge.bench.compare import RowState
from medsam_edge.bench.runners import SEGMENTER_STAGES
from medsam_edge.bench.timing import latency_stats, mb, paired_ratio

# A row's stages: the frame's read, then the Segmenter's own.
ROW_STAGES = ("read", *SEGMENTER_STAGES)
FORMAT = "medsam-edge/bench"


def row_json(row: RowState, ref: RowState | None, compute: dict | None, thresholds: dict, peaks: dict) -> dict:
    """One row's summary, with its samples and per-frame fidelity kept for re-analysis."""
    out = {"name": row.name, "family": row.spec.family, "precision": row.spec.precision, "status": row.status,
           "error": row.error or None, "failed_at": row.failed_at or None,
           "describe": getattr(row.runner, "describe", None) or row.spec.meta.get("describe"),
           "load_s": row.load_s, "first_frame_ms": row.first_frame_ms,
           "time_to_first_frame_s": _ttff(row), "rss_after_load_mb": row.rss_after_load_mb,
           "peak_rss_mb": mb(peaks.get(row.name)), "gpu_peak_mb": row.gpu_peak_mb}
    if row.trace:
        out["trace"] = row.trace
    if not row.samples:
        return out | {"samples": []}
    lat = {s: latency_stats([x[s] for x in row.samples]) for s in (*ROW_STAGES, "e2e")}
    out["latency_ms"] = lat
    out["fps"] = round(1e3 / lat["e2e"]["mean"], 3) if lat["e2e"]["mean"] else None
    if ref is not None and ref.samples:
        pairs = _pairs(ref, row)
        out["speedup_vs_reference"] = {s: paired_ratio([a[s] for a, _ in pairs], [b[s] for _, b in pairs])
                                       for s in ("encode", "decode", "e2e")}
    if compute:
        out["floor"] = {"encode_floor_ms": compute["encoder_floor_ms"], "decode_floor_ms": compute["decoder_floor_ms"],
                        "encode_x_floor": _ratio(lat["encode"]["p50"], compute["encoder_floor_ms"]),
                        "decode_x_floor": _ratio(lat["decode"]["p50"], compute["decoder_floor_ms"])}
    out["fidelity"] = fidelity.aggregate(row.vs_reference)
    if row.vs_fp32:
        out["fidelity_vs_fp32"] = fidelity.aggregate(row.vs_fp32)
    speed = (out.get("speedup_vs_reference") or {}).get("e2e", {}).get("median")
    out["flags"] = fidelity.verdict(out["fidelity"], speed, thresholds)
    out["samples"] = row.samples
    out["fidelity_frames"] = row.vs_reference
    return out


def compute_json(model_id: str, boxes: int, matmul: dict) -> dict:
    counted = flops.count(model_id, boxes)
    return {**counted, "matmul": matmul,
            "encoder_floor_ms": flops.floor_ms(counted["encoder_flops"], matmul["gflops"]),
            "decoder_floor_ms": flops.floor_ms(counted["decoder_flops"], matmul["gflops"])}


def _pairs(ref: RowState, row: RowState) -> list[tuple[dict, dict]]:
    by_key = {(s["frame"], s["run"]): s for s in ref.samples}
    return [(by_key[(s["frame"], s["run"])], s) for s in row.samples if (s["frame"], s["run"]) in by_key]


def _ttff(row: RowState) -> float | None:
    if row.load_s is None or row.first_frame_ms is None:
        return None
    return round(row.load_s + row.first_frame_ms / 1e3, 3)


def _ratio(a, b) -> float | None:
    return round(a / b, 2) if a and b else None


# -- Markdown ----------------------------------------------------------------------------

# Above this share of the machine's CPU going to other processes, absolute times are not this
# run's alone (an idle 2-core machine measured 0.2 %; one other busy process, about 48 %).
CONTENTION_SHARE = 0.05


def load_text(report: dict) -> str:
    """The load a run saw: the load average at both ends and, where measured, other processes' CPU share."""
    mach = report.get("machine") or {}
    text = f"load average at start {mach.get('load_average')}, at end {report.get('load_average_end')}"
    share = report.get("cpu_used_by_others")
    return text if share is None else f"{text}; other processes used {share:.1%} of the CPU during the run"


def contention_note(report: dict) -> str | None:
    """Why absolute times may be inflated, or None when nothing else ran."""
    share = report.get("cpu_used_by_others")
    if share is not None:
        if share <= CONTENTION_SHARE:
            return None
        return (f"other processes used {share:.1%} of the CPU during this run, so absolute times are inflated; "
                "ratios are paired within rounds")
    # Reports from before the CPU-time figure: the load average counts this run's own threads too.
    mach = report.get("machine") or {}
    busy = [x[0] for x in (mach.get("load_average"), report.get("load_average_end")) if x]
    if busy and mach.get("cores") and max(busy) > 1.5 * mach["cores"]:
        return (f"the 1-minute load average reached {max(busy)} on {mach['cores']} cores, this run's own threads "
                "included: another job may have competed for the CPU; ratios are paired within rounds")
    return None


def markdown(report: dict, heading: str = "##") -> str:
    m = report.get("model") or {}
    s = report.get("settings") or {}
    mach = report.get("machine") or {}
    what = "backends against the PyTorch reference" if report.get("rows") else "streaming through the runtime"
    where = f" [{report['out'].rstrip('/').split('/')[-1]}]" if report.get("out") else ""
    lines = [f"{heading} {m.get('model_id', '?')}{where}: {what}", "",
             f"- command: `{report.get('command', '')}`",
             f"- date: {mach.get('date', '?')}; status: {report.get('status')}; wall time {report.get('wall_s', '?')} s",
             f"- machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, {mach.get('memory_gb', '?')} GB, "
             f"GPU: {mach.get('gpu') or 'none'}; {load_text(report)}",
             f"- CPU flags: {' '.join(mach.get('cpu_flags') or []) or 'not recorded'}",
             f"- frames: {s.get('frames', 0)} ({', '.join(s.get('sources', []))}), {s.get('runs')} run(s) each after "
             f"{s.get('warmup')} warm-up; rows run round-robin per frame in one process" if s.get("frames") else
             "- no backend comparison in this run (streaming only)"]
    note = contention_note(report)
    if note:
        lines.append(f"- note: {note}")
    lines += [f"- error: {e}" for e in report.get("errors", [])]
    rows = report.get("rows", [])
    if rows:
        lines += ["", _backend_table(rows), "", "Stages, p50 / p99 ms:", "", _stage_table(rows)]
        reduced = [r for r in rows if r.get("fidelity_vs_fp32", {}).get("masks")]
        if reduced:
            lines += ["", _reduced_table(reduced)]
        skipped = [r for r in rows if r["status"] == "skipped"]
        if skipped:
            lines += ["", "Not run here:"] + [f"- {r['name']}: {r['error']}" for r in skipped]
    if report.get("compute"):
        lines += ["", _compute_table(report["compute"])]
    for st in report.get("streaming", []):
        lines += ["", _stream_table(st)]
    if report.get("long_run"):
        lines += ["", _long_table(report["long_run"])]
    lines += ["", f"Fidelity thresholds (a faster row below any is flagged): {report.get('thresholds')}"]
    return "\n".join(lines) + "\n"


def _backend_table(rows: list[dict]) -> str:
    out = ["| row | status | end-to-end p50 / p95 / p99 ms (IQR) | fps | speed-up vs reference, paired median [p5-p95] "
           "| encoder p50 ms (x FP32 floor) | decoder p50 ms | time to first frame s | process RSS peak while it ran, MB "
           "| Dice vs ref mean / p5 / min | IoU mean | embedding cosine min | flag |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "skipped":
            continue  # listed below the table, with the reason
        if r["status"] != "ok" or "latency_ms" not in r:
            why = r.get("error") or ""
            where = f" ({r['failed_at']})" if r.get("failed_at") else ""
            out.append(f"| {r['name']} | {r['status']}{where} | {why} |" + " |" * 10)
            continue
        e, f = r["latency_ms"]["e2e"], r.get("fidelity") or {}
        sp = (r.get("speedup_vs_reference") or {}).get("e2e") or {}
        fl = r.get("floor") or {}
        out.append(
            f"| {r['name']} | ok | {e['p50']:.1f} / {e['p95']:.1f} / {e['p99']:.1f} ({e['iqr']:.1f}) | {r['fps']:.2f} "
            f"| {ratio(sp)} | {r['latency_ms']['encode']['p50']:.1f} ({_x(fl.get('encode_x_floor'))}) "
            f"| {r['latency_ms']['decode']['p50']:.1f} | {number(r.get('time_to_first_frame_s'), 2)} "
            f"| {number(r.get('peak_rss_mb'), 0)} | {number(f.get('dice_mean'), 4)} / {number(f.get('dice_p5'), 4)} / "
            f"{number(f.get('dice_min'), 4)} | {number(f.get('iou_mean'), 4)} | {number(f.get('cosine_min'), 6)} "
            f"| {'; '.join(r.get('flags') or []) or '-'} |")
    return "\n".join(out)


def _stage_table(rows: list[dict]) -> str:
    out = ["| row | " + " | ".join(ROW_STAGES) + " | end to end |", "|---" * (len(ROW_STAGES) + 2) + "|"]
    for r in rows:
        if "latency_ms" in r:
            cells = [f"{r['latency_ms'][s]['p50']:.1f} / {r['latency_ms'][s]['p99']:.1f}" for s in (*ROW_STAGES, "e2e")]
            out.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _reduced_table(rows: list[dict]) -> str:
    out = ["Reduced precision against onnxruntime-cpu-fp32 (same preprocessing, so only the precision differs):", "",
           "| row | Dice mean / p5 / min | IoU mean | embedding cosine mean / min |", "|---|---|---|---|"]
    for r in rows:
        f = r["fidelity_vs_fp32"]
        out.append(f"| {r['name']} | {f['dice_mean']:.4f} / {f['dice_p5']:.4f} / {f['dice_min']:.4f} | {f['iou_mean']:.4f} "
                   f"| {number(f.get('cosine_mean'), 6)} / {number(f.get('cosine_min'), 6)} |")
    return "\n".join(out)


def _compute_table(c: dict) -> str:
    mm = c["matmul"]
    return "\n".join([
        f"Compute floor ({c['method']}; FP32 matmul {mm['size']}x{mm['size']} measured here: torch "
        f"{(mm.get('torch_gflops') or {}).get('best')} GFLOP/s, numpy {mm['numpy_gflops']['best']} GFLOP/s best):", "",
        "| part | counted GFLOP | floor at the best measured rate, ms |", "|---|---|---|",
        f"| encoder ({c['input_size']}x{c['input_size']}) | {c['encoder_flops'] / 1e9:.2f} | {c['encoder_floor_ms']:.1f} |",
        f"| decoder ({c['decoder_boxes']} box) | {c['decoder_flops'] / 1e9:.2f} | {c['decoder_floor_ms']:.1f} |"])


def _stream_table(st: dict) -> str:
    threads = f"onnxruntime threads encoder/decoder {st.get('threads') or 'default'}, real-time mode " \
              f"{st.get('realtime_threads') or st.get('threads') or 'default'}"
    out = [f"Streaming through the runtime ({st['backend']}, {threads}): {st['clip']}, "
           f"{st['frames']} frames at "
           f"{st['clip_fps']:g} fps, boxes {st['boxes']}", "",
           "| mode | fps | reuse rate | encoded | dropped | capture-to-mask p50 / p99 ms | first half p50 / p99 "
           "| second half p50 / p99 | Dice vs fresh mean / min |", "|---|---|---|---|---|---|---|---|---|"]
    for r in st["rows"]:
        out.append(f"| {r['mode']} | {r['fps']:.2f} | {r['reuse_rate']:.2f} | {r.get('encoded', '-')} "
                   f"| {r.get('dropped', 0)} | {_pp(r['capture_to_mask_ms'])} | {_pp(r['first_half_ms'])} "
                   f"| {_pp(r['second_half_ms'])} | {r['dice_mean']:.4f} / {r['dice_min']:.4f} |")
    from medsam_edge.bench.reuse import curve_table, stability_line

    if st.get("reference_stability"):
        out += ["", stability_line(st["reference_stability"])]
    if st.get("curve"):
        out += ["", curve_table(st)]
    return "\n".join(out)


def _long_table(lr: dict) -> str:
    t = lr.get("tenths_ms") or []
    return "\n".join([
        f"Long real-time run (onnxruntime threads encoder/decoder: {lr.get('threads') or 'default'}): {lr['clip']} looped, "
        f"{lr['frames_requested']} "
        f"frames captured at {lr['clip_fps']:g} fps, {lr['frames']} answered", "",
        "| answered | seconds | fps | dropped | encoded | staleness mean, frames | capture-to-mask p50 / p99 ms "
        "| first half / second half p99 | Dice vs fresh mean / min (masks) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {lr['frames']} | {lr['seconds']} | {lr['fps']:.2f} | {lr['dropped']} | {lr['encoded']} "
        f"| {number(lr.get('staleness_mean'), 1)} | {_pp(lr['capture_to_mask_ms'])} "
        f"| {lr['first_half_ms'].get('p99', '-')} / {lr['second_half_ms'].get('p99', '-')} "
        f"| {number(lr.get('dice_vs_fresh_mean'), 4)} / {number(lr.get('dice_vs_fresh_min'), 4)} "
        f"({lr.get('dice_count', 0)}) |",
        "", "Capture-to-mask p99 per tenth of the run, ms: " + (", ".join(str(x["p99"]) for x in t) or "-")
        + f"; least-squares trend after the first tenth: {lr.get('trend') or '-'}"])


def _pp(d: dict) -> str:
    return f"{d['p50']} / {d['p99']}" if d else "-"


def _x(v) -> str:
    return f"{v:.1f}x" if v is not None else "-"
