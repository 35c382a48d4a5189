"""The viewer measured through its real page in Chromium (issue 26's targets).

    python -m medsam_edge.bench.viewer models/lite_medsam CLIP --box x0,y0,x1,y1 \\
        [--retime 30 --resize 854x480] [--seconds 300] [--edits 30] [--screenshot docs/viewer.jpg]

1. Prompt edit on a frozen frame to mask on screen: the server opens frozen (--paused),
   a real mouse moves the box --edits times, one at a time; the page times each edit
   from its message to the frame drawn with its answer. Beside it, in the same run, the
   decoder alone on that frame and box: the runtime's (one thread, as the viewer's decoder
   gets) and the PyTorch reference's (where torch is installed), as ratios.
2. Live for --seconds: the share of the source's captured frames the page drew with
   masks made for that very frame, masks/s and capture-to-mask from the HUD, the bytes
   the page received per second, the server's memory sampled every few seconds.
3. --screenshot: the page as it shows the clip, for docs/viewer.md.
Prints one JSON object (with the machine, CPU flags, load) and a line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medsam_edge.bench import viewer_browser as vb
from medsam_edge.bench.machine import cpu_flags
from medsam_edge.bench.timing import latency_stats


def retimed(source: str, fps: float | None, size: str | None, seconds: float) -> str:
    """SOURCE re-stamped at `fps` and resized to WxH, as an MP4 long enough to loop over."""
    if not fps and not size:
        return source
    import cv2

    from medsam_edge.runtime.sources import open_source

    w, h = (int(v) for v in size.split("x")) if size else (None, None)
    out = Path(tempfile.mkdtemp(prefix="medsam-view-bench-")) / "clip.mp4"
    writer = None
    with open_source(source) as src:
        for frame in src:
            image = frame.image if w is None else cv2.resize(frame.image, (w, h), interpolation=cv2.INTER_AREA)
            if writer is None:
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps or src.fps or 30.0,
                                         (image.shape[1], image.shape[0]))
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(out)


def decoder_alone(model_dir: str, source: str, frame_index: int, box: list[float], repeats: int = 20) -> dict:
    """The decoder on that frame and box: the runtime's (one thread) and the reference's."""
    from medsam_edge.runtime import Predictor
    from medsam_edge.runtime.sources import open_source

    with open_source(source) as src:
        image = next(f for f in src if f.index >= frame_index).image
    out = {}
    with Predictor(model_dir, realtime=True) as p:  # the thread split the viewer runs with
        out["runtime"] = _time_decode(p.segmenter, image, box, repeats)
        md = p.model_dir
    try:
        from medsam_edge.bench.runners import reference_runner

        ref = reference_runner(md)
        out["reference"] = _time_decode(ref.segmenter, image, box, repeats)
        ref.close()
    except ImportError as e:
        out["reference"] = {"skipped": f"the PyTorch reference needs the export extra ({e.name})"}
    return out


def _time_decode(segmenter, image, box, repeats: int) -> dict:
    enc = segmenter.encode(image)
    samples = []
    for _ in range(repeats):
        t: dict = {}
        segmenter.decode(enc, [box], t)
        samples.append(t["decode"] + t["postprocess"])
    return latency_stats(samples)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def page_box(tab, box: list[float]) -> tuple[float, float, float, float]:
    v = tab.evaluate("(() => { const r = document.getElementById('view').getBoundingClientRect();"
                     " const v = medsamView.view || {}; return [r.left, r.top, v.ox, v.oy, v.scale]; })()")
    left, top, ox, oy, s = v
    return left + ox + box[0] * s, top + oy + box[1] * s, left + ox + box[2] * s, top + oy + box[3] * s


def edits(tab, srv, box: list[float], n: int) -> dict:
    x0, y0, x1, y1 = page_box(tab, box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2  # a press inside the box takes hold of it
    tab.evaluate("medsamView.stats.editLatencies = []")
    for k in range(n):
        step = 4 if k % 2 == 0 else -4  # back and forth: the box stays where it was drawn
        done = tab.evaluate("medsamView.stats.editLatencies.length")
        tab.mouse("mouseMoved", cx, cy)
        tab.mouse("mousePressed", cx, cy, buttons=1)
        tab.mouse("mouseMoved", cx + step, cy, buttons=1)
        tab.mouse("mouseReleased", cx + step, cy)
        tab.wait_for(f"medsamView.stats.editLatencies.length > {done}", timeout=60)
        cx += step
    return latency_stats(tab.evaluate("medsamView.stats.editLatencies"))


def live(tab, srv, seconds: float) -> dict:
    tab.evaluate("document.getElementById('freeze').click()")
    srv.wait_state(lambda s: not s["frozen"])
    tab.wait_for("medsamView.stats.framesWithMasks > 2", timeout=300)  # past the first embedding
    start_state = srv.state()
    start_page = tab.evaluate("medsamView.stats")
    t0 = time.monotonic()
    memory = [(0.0, rss_mb(srv.proc.pid))]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(5.0, max(0.1, seconds - (time.monotonic() - t0))))
        memory.append((round(time.monotonic() - t0, 1), rss_mb(srv.proc.pid)))
    wall = time.monotonic() - t0
    end_state, end_page = srv.state(), tab.evaluate("medsamView.stats")
    captured = end_state["counters"]["captured"] - start_state["counters"]["captured"]
    shown = end_page["framesWithMasks"] - start_page["framesWithMasks"]
    rss = np.asarray([m for _, m in memory])
    packets = end_page["packets"] - start_page["packets"]
    per_frame = (end_page["bytes"] - start_page["bytes"]) / packets if packets else 0.0
    fps = end_state["source"]["fps"]
    # Over the second half: the first seconds fill the ring buffer (--buffer-seconds of frames).
    half = memory[len(memory) // 2:]
    slope = np.polyfit([t for t, _ in half], [m for _, m in half], 1)[0] * 60 if len(half) > 2 else 0.0
    return {"seconds": round(wall, 1), "captured": captured, "drawn_with_own_masks": shown,
            "share_drawn_with_own_masks": round(shown / captured, 4) if captured else None,
            "answered": end_state["counters"]["answered"] - start_state["counters"]["answered"],
            "bytes_per_s": round((end_page["bytes"] - start_page["bytes"]) / wall),
            # What a page receives per frame (JPEG, masks, HUD): times the source's rate, the
            # bandwidth of a page shown every frame, whatever this machine managed to answer.
            "bytes_per_frame": round(per_frame),
            "mbit_per_s_at_source_rate": None if not fps else round(per_frame * fps * 8 / 1e6, 2),
            "mbit_per_s": round((end_page["bytes"] - start_page["bytes"]) * 8 / wall / 1e6, 2),
            "hud_end": end_state["hud"], "server_rss_mb": {"start": round(rss[0], 1), "max": round(rss.max(), 1),
                                                          "end": round(rss[-1], 1),
                                                          "slope_mb_per_min_second_half": round(float(slope), 2),
                                                          "ring_buffer_mb_end": end_state["buffer"]["megabytes"]},
            "memory_samples": memory}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medsam_edge.bench.viewer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("source")
    p.add_argument("--box", required=True, action="append",
                   help="x0,y0,x1,y1 in the (resized) frame's pixels; repeatable (edits move the first)")
    p.add_argument("--start-frame", type=int, default=0)
    p.add_argument("--retime", type=float, help="re-stamp the clip at this frame rate (e.g. 30)")
    p.add_argument("--resize", help="WxH, e.g. 854x480")
    p.add_argument("--seconds", type=float, default=300.0, help="live phase length (default 300)")
    p.add_argument("--edits", type=int, default=30, help="prompt edits on the frozen frame (default 30)")
    p.add_argument("--screenshot", type=Path, help="save the page (PNG, or JPEG by the suffix) after the live phase")
    p.add_argument("--screenshot-at", choices=("frozen", "live"), default="live",
                   help="frozen: after the edits, on the paused frame; live: at the end of the live phase")
    p.add_argument("--window", default="1100x640", help="browser viewport WxH")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    box = [float(v) for v in args.box[0].split(",")]
    source = retimed(args.source, args.retime, args.resize, args.seconds)
    result: dict = {"machine": {"cpu_flags": cpu_flags(), "cores": os.cpu_count(), "load_start": os.getloadavg()},
                    "source": args.source, "retime": args.retime, "resize": args.resize}
    result["decoder_alone_ms"] = decoder_alone(args.model_dir, source, args.start_frame, box)
    w, h = (int(v) for v in args.window.split("x"))
    boxes = [a for b in args.box for a in ("--box", b)]
    with vb.ViewServer(args.model_dir, source, "--paused", "--start-frame", str(args.start_frame), *boxes) as srv, vb.Browser(width=w, height=h) as browser:
        tab = browser.tab(srv.url)
        tab.wait_for("window.medsamView && medsamView.stats.drawn > 0 && medsamView.state", timeout=300)
        result["edit_to_screen_ms"] = edits(tab, srv, box, args.edits)
        ref = result["decoder_alone_ms"].get("reference", {})
        if ref.get("p50") and result["edit_to_screen_ms"].get("p50"):
            result["edit_vs_reference_decoder"] = round(ref["p50"] / result["edit_to_screen_ms"]["p50"], 3)
        if args.screenshot and args.screenshot_at == "frozen":
            save(tab.screenshot(), args.screenshot)
        result["live"] = live(tab, srv, args.seconds)
        if args.screenshot and args.screenshot_at == "live":
            save(tab.screenshot(), args.screenshot)
        result["page_errors"] = tab.errors()
    result["machine"]["load_end"] = os.getloadavg()
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    e, lv = result["edit_to_screen_ms"], result["live"]
    print(f"edit -> mask on screen p50 {e.get('p50')} ms (decoder alone {result['decoder_alone_ms']['runtime']['p50']}"
          f" ms); live: {lv['drawn_with_own_masks']}/{lv['captured']} frames drawn with their own masks "
          f"({lv['share_drawn_with_own_masks']}); {lv['mbit_per_s']} Mbit/s per page; server RSS "
          f"{lv['server_rss_mb']['start']} -> {lv['server_rss_mb']['end']} MB")
    return 0


def save(image: np.ndarray, path: Path) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 82] if path.suffix.lower() in (".jpg", ".jpeg") else []
    cv2.imwrite(str(path), bgr, params)


if __name__ == "__main__":
    raise SystemExit(main())
