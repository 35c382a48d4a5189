"""The comparison loop: every row on the same frames and boxes, round-robin.

For each frame and run, every row processes the frame before any row moves on, and
the order rotates from one round to the next, so slow drift (another process, heat,
caches) lands on all rows alike and paired ratios cancel it. A row that fails is
marked failed with its error and stage, and the others go on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from medsam_edge.bench import fidelity
from medsam_edge.bench.frames import BenchFrame
from medsam_edge.bench.rows import REFERENCE, RowSpec
from medsam_edge.bench.timing import MemorySampler, mb

# Reduced-precision rows are also compared with this row: it separates the precision's
# cost from the preprocessing difference every runtime row shares.
FP32_BASELINE = "onnxruntime-cpu-fp32"


@dataclass
class RowState:
    spec: RowSpec
    status: str = "pending"  # ok, skipped, failed
    error: str = ""
    failed_at: str = ""
    trace: str = ""
    runner: object | None = None
    load_s: float | None = None
    first_frame_ms: float | None = None
    rss_after_load_mb: float | None = None
    gpu_peak_mb: float | None = None
    samples: list[dict] = field(default_factory=list)
    vs_reference: list[dict] = field(default_factory=list)
    vs_fp32: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def fail(self, where: str, e: BaseException) -> None:
        self.status, self.failed_at = "failed", where
        lines = str(e).strip().splitlines()
        self.error = f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
        self.trace = traceback.format_exc(limit=4)


class Comparison:
    def __init__(self, specs: list[RowSpec], frames: list[BenchFrame], runs: int, warmup: int,
                 sampler: MemorySampler, say: Callable[[str], None] = lambda s: None) -> None:
        self.rows = [RowState(s) for s in specs]
        self.frames, self.runs, self.warmup = frames, max(1, runs), max(1, warmup)
        self.sampler, self.say = sampler, say
        self.rounds_done = 0

    def active(self) -> list[RowState]:
        return [r for r in self.rows if r.status == "ok"]

    def run(self) -> None:
        try:
            self._open_all()
            self._warm_up()
            for fi, frame in enumerate(self.frames):
                self._frame(fi, frame)
        finally:
            for r in self.rows:
                if r.runner is not None:
                    r.runner.close()
                    r.runner = None

    def _open_all(self) -> None:
        for row in self.rows:
            if row.spec.opener is None:
                row.status, row.error = "skipped", row.spec.skip_reason
                self.say(f"{row.name}: skipped ({row.error})")
                continue
            t0 = time.perf_counter()
            try:
                with self.sampler.labelled(row.name):
                    row.runner = row.spec.opener()
            except Exception as e:  # a backend that cannot load is a result, not a crash
                row.fail("load", e)
                self.say(f"{row.name}: failed to load: {row.error}")
                continue
            row.load_s = round(time.perf_counter() - t0, 3)
            row.rss_after_load_mb = mb(self.sampler.rss())
            row.status = "ok"
            self.say(f"{row.name}: loaded in {row.load_s:.1f} s")

    def _warm_up(self) -> None:
        first = self.frames[0]
        for row in self.active():
            try:
                for i in range(self.warmup):
                    with self.sampler.labelled(row.name):
                        out = row.runner.run(first.image, first.boxes)
                    if i == 0:
                        row.first_frame_ms = round(sum(out.stages_ms.values()) + first.read_ms, 3)
            except Exception as e:
                row.fail("warm-up", e)
                self.say(f"{row.name}: failed in warm-up: {row.error}")

    def _frame(self, fi: int, frame: BenchFrame) -> None:
        outputs: dict[str, tuple] = {}
        for r in range(self.runs):
            rows = self.active()
            if not rows:
                return
            k = self.rounds_done % len(rows)
            for row in rows[k:] + rows[:k]:
                self._one(row, fi, r, frame, outputs)
            self.rounds_done += 1
        self._fidelity(fi, outputs)
        e2e = {r.name: r.samples[-1]["e2e"] for r in self.active() if r.samples and r.samples[-1]["frame"] == fi}
        self.say(f"frame {fi + 1}/{len(self.frames)}: " + ", ".join(f"{n} {v:.0f} ms" for n, v in e2e.items()))

    def _one(self, row: RowState, fi: int, r: int, frame: BenchFrame, outputs: dict) -> None:
        gpu = _gpu_reset() if row.runner.device == "cuda" else None
        try:
            with self.sampler.labelled(row.name):
                out = row.runner.run(frame.image, frame.boxes)
            if r == 0:  # outputs are deterministic: one copy per frame is enough for fidelity
                outputs[row.name] = (out.masks, row.runner.to_numpy(out.embedding))
        except Exception as e:
            row.fail(f"frame {fi} run {r}", e)
            self.say(f"{row.name}: failed on frame {fi}: {row.error}")
            return
        if gpu is not None:
            row.gpu_peak_mb = max(row.gpu_peak_mb or 0.0, _gpu_peak())
        stages = {k: round(v, 3) for k, v in out.stages_ms.items()}
        row.samples.append({"frame": fi, "run": r, "read": round(frame.read_ms, 3), **stages,
                            "e2e": round(frame.read_ms + sum(out.stages_ms.values()), 3)})

    def _fidelity(self, fi: int, outputs: dict) -> None:
        ref, base = outputs.get(REFERENCE), outputs.get(FP32_BASELINE)
        for row in self.active():
            if row.name not in outputs:
                continue
            masks, emb = outputs[row.name]
            try:
                if ref is not None:
                    row.vs_reference.append({"frame": fi, **fidelity.compare(masks, ref[0], emb, ref[1])})
                if base is not None and row.spec.precision != "fp32":
                    row.vs_fp32.append({"frame": fi, **fidelity.compare(masks, base[0], emb, base[1])})
            except ValueError as e:
                row.fail(f"fidelity on frame {fi}", e)


def _gpu_reset():
    import torch

    torch.cuda.reset_peak_memory_stats()
    return True


def _gpu_peak() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)
