"""PNG plots from a report: latency distribution per row, speed against fidelity, long-run latency.

matplotlib is optional (not a dependency of medsam-edge): without it the plots are
skipped and the report says so.
"""

from __future__ import annotations

from pathlib import Path


def write(report: dict, out_dir: Path) -> dict:
    """-> {"files": [...]} or {"skipped": reason}."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server or in CI
        import matplotlib.pyplot as plt
    except ImportError as e:
        return {"skipped": f"matplotlib is not installed ({e}); pip install matplotlib for plots"}
    files = []
    rows = [r for r in report.get("rows", []) if r.get("samples")]
    if rows:
        files.append(_latency(plt, rows, report, out_dir / "latency.png"))
        files.append(_scatter(plt, rows, report, out_dir / "speed_vs_fidelity.png"))
    if (report.get("long_run") or {}).get("capture_to_mask_samples_ms"):
        files.append(_long(plt, report["long_run"], out_dir / "long_run_latency.png"))
    return {"files": [str(f) for f in files]}


def _latency(plt, rows: list[dict], report: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.6 * len(rows) + 2.5), squeeze=False)
    names = [r["name"] for r in rows]
    for ax, stage in zip(axes[0], ("e2e", "encode")):
        data = [[s[stage] for s in r["samples"]] for r in rows]
        try:
            ax.boxplot(data, orientation="horizontal", whis=(1, 99), showmeans=True)
        except TypeError:  # matplotlib < 3.10
            ax.boxplot(data, vert=False, whis=(1, 99), showmeans=True)
        ax.set_yticks(range(1, len(names) + 1), names)
        ax.set_xscale("log")
        ax.set_xlabel(f"{'end-to-end' if stage == 'e2e' else 'encoder'} latency, ms (log; whiskers p1-p99)")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{(report.get('model') or {}).get('model_id', '?')}: latency per row, "
                 f"{(report.get('settings') or {}).get('frames')} frames")
    return _save(plt, fig, path)


def _scatter(plt, rows: list[dict], report: dict, path: Path) -> Path:
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        sp = ((r.get("speedup_vs_reference") or {}).get("e2e") or {})
        f = r.get("fidelity") or {}
        if not sp.get("n") or f.get("dice_mean") is None:
            continue
        x, y = sp["median"], f["dice_mean"]
        ax.errorbar(x, y, xerr=[[x - sp["p5"]], [sp["p95"] - x]], yerr=[[y - f["dice_min"]], [0]],
                    fmt="o", color="tab:red" if r.get("flags") else "tab:blue", capsize=3)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    floor = (report.get("thresholds") or {}).get("dice_mean")
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", lw=1, label=f"Dice threshold {floor}")
        ax.legend(loc="lower left")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%gx"))
    ax.set_xlabel("end-to-end speed-up vs PyTorch reference (paired median, p5-p95)")
    ax.set_ylabel("mask Dice vs reference (mean; bar to worst)")
    ax.set_title(f"{(report.get('model') or {}).get('model_id', '?')}: speed vs fidelity (red: flagged)")
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def _long(plt, lr: dict, path: Path) -> Path:
    lat = lr["capture_to_mask_samples_ms"]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(range(len(lat)), lat, lw=0.6)
    ax.set_xlabel("frame")
    ax.set_ylabel("capture-to-mask, ms")
    ax.set_title(f"real-time mode, {lr['clip']} looped: {lr['frames']} frames, {lr['dropped']} dropped")
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    """Every plot ends the same way: fitted layout, one PNG, the figure freed."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
