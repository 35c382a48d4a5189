"""The TensorRT layer's behaviour on a real GPU, each check returning a small JSON record.

Run by gpu_check.py once engines exist; every check is independent and reports
{"status": "ok" | "failed" | "error", ...} so one failure does not hide the others:
- streams: both of the backend's streams are non-blocking (graph capture safe);
- lifetime: with N slots, the N+1-th encode expires the first embedding (ExpiredEmbedding,
  never a silent read) and the newest N-1 stay exact;
- concurrent: an encoder thread overwriting slots while the decoder reads: every decode
  is either exact for its frame or refused, never torn;
- half_init: a backend whose __init__ fails after allocating (an impossible slot count)
  gives its device memory back;
- rebuild_policy: "never" opens fresh engines, refuses a corrupt plan (StaleEngines) and
  "if-stale" rebuilds it, the log saying which;
- timing_cache: a corrupt timing cache is set aside and the build still succeeds;
- graphs: CUDA-graph decoding equals plain decoding for several prompt counts.
"""

from __future__ import annotations

import logging
import threading
import traceback

import numpy as np

from medsam_edge.contract import box_tokens


def run_all(md, precision: str, frames: list, boxes: list) -> dict:
    checks = {"streams": _streams, "lifetime": _lifetime, "concurrent": _concurrent, "half_init": _half_init,
              "graphs": _graphs, "timing_cache": _timing_cache, "rebuild_policy": _rebuild_policy}
    out = {}
    for name, fn in checks.items():
        try:
            out[name] = fn(md, precision, frames, boxes)
        except Exception as e:
            out[name] = {"status": "error", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=4)}
    return out


def _verdict(ok: bool, **figures) -> dict:
    return {"status": "ok" if ok else "failed", **figures}


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Same logits up to kernel rounding; a torn or stale embedding is off by far more."""
    return bool(np.abs(a - b).max() <= 1e-4 * max(float(np.abs(b).max()), 1e-6))


def _streams(md, precision, frames, boxes) -> dict:
    from medsam_edge.engines.cuda import runtime
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend

    cudart = runtime()
    with TensorrtBackend(md, precision) as b:
        flags = [int(cudart.cudaStreamGetFlags(s)[1]) for s in b.streams]
    want = int(cudart.cudaStreamNonBlocking)
    return _verdict(all(f & want for f in flags), flags=flags, non_blocking=want)


def _lifetime(md, precision, frames, boxes) -> dict:
    from medsam_edge.engines.base import ExpiredEmbedding, max_kept_embeddings
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend

    slots = 3
    coords, labels = box_tokens(boxes[0])
    with TensorrtBackend(md, precision, slots=slots) as b:
        alone = []
        for f in frames[:1] * (slots + 1):
            e = b.encode(f)
            alone.append(b.decode(e, coords, labels)[0])
        handles = [b.encode(frames[k % len(frames)]) for k in range(slots + 1)]
        expired = not b.embedding_valid(handles[0])
        refused = False
        try:
            b.decode(handles[0], coords, labels)
        except ExpiredEmbedding:
            refused = True
        kept = max_kept_embeddings(b, 8)
        valid = [b.embedding_valid(h) for h in handles[-kept:]]
    same = float(max(np.abs(a - alone[0]).max() for a in alone))
    return _verdict(expired and refused and all(valid) and all(_close(a, alone[0]) for a in alone), slots=slots,
                    first_expired=expired, decode_refused=refused, newest_valid=valid, repeat_max_abs_diff=same)


def _concurrent(md, precision, frames, boxes, rounds: int = 60) -> dict:
    """Real-time mode's pattern: encodes in a thread, decodes of the newest handle meanwhile."""
    from medsam_edge.engines.base import ExpiredEmbedding
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend

    coords, labels = box_tokens(boxes[0])
    with TensorrtBackend(md, precision, slots=2) as b:
        truth = [b.decode(b.encode(f), coords, labels)[0] for f in frames]
        latest: dict = {}
        done = threading.Event()

        def encoder() -> None:
            try:
                for k in range(rounds):
                    latest["h"] = (k % len(frames), b.encode(frames[k % len(frames)]))
            finally:
                done.set()

        t = threading.Thread(target=encoder)
        t.start()
        exact = refused = torn = 0
        while not done.is_set():
            if "h" not in latest:
                continue
            k, h = latest["h"]
            try:
                logits = b.decode(h, coords, labels)[0]
            except ExpiredEmbedding:
                refused += 1
                continue
            if _close(logits, truth[k]):
                exact += 1
            else:
                torn += 1
        t.join()
    return _verdict(torn == 0 and exact > 0, exact=exact, refused=refused, torn=torn, encodes=rounds)


def _free_bytes() -> int:
    from medsam_edge.engines.cuda import ok, runtime

    cudart = runtime()
    free, _ = ok(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free)


def _half_init(md, precision, frames, boxes) -> dict:
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend
    from medsam_edge.errors import InputError

    with TensorrtBackend(md, precision):  # warm the CUDA context and TensorRT's own allocations
        pass
    before = _free_bytes()
    failed = None
    try:
        # More 4 MB embedding slots than the GPU holds: cudaMalloc fails after streams,
        # events, contexts and most slots were allocated.
        TensorrtBackend(md, precision, slots=before // (256 * 64 * 64 * 4) + 16)
    except InputError as e:
        failed = str(e)
    leaked = before - _free_bytes()
    # The CUDA allocator's granularity leaves a few MB of noise; a leak would be GBs here.
    return _verdict(failed is not None and leaked < 64 << 20, error=failed, leaked_bytes=leaked)


def _graphs(md, precision, frames, boxes) -> dict:
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend

    worst = 0.0
    with TensorrtBackend(md, precision) as plain, TensorrtBackend(md, precision, cuda_graphs=True) as graphs:
        for n in (1, 2, 3, 1):
            coords, labels = box_tokens(boxes[0][:n])
            a = plain.decode(plain.encode(frames[0]), coords, labels)[0]
            g = graphs.decode(graphs.encode(frames[0]), coords, labels)[0]
            worst = max(worst, float(np.abs(a - g).max() / max(float(np.abs(a).max()), 1e-6)))
        captured = graphs.describe()["captured_shapes"]
        still = graphs.cuda_graphs
    return _verdict(worst <= 1e-4 and still and len(captured) == 3, max_rel_diff=worst, captured_shapes=captured)


def _timing_cache(md, precision, frames, boxes) -> dict:
    from medsam_edge.engines import engine_manifest as em
    from medsam_edge.engines.tensorrt_status import engine_status
    from medsam_edge.engines.trt_build import build_engines

    path = engine_status(md, precision).path / em.TIMING_CACHE
    path.write_bytes(b"not a timing cache" * 100)
    out = build_engines(md, (precision,), progress=False)
    fresh = engine_status(md, precision)
    return _verdict(fresh.usable and (out / em.TIMING_CACHE).read_bytes()[:18] != b"not a timing cache",
                    rebuilt=str(out))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record) -> None:
        self.lines.append(record.getMessage())


def _rebuild_policy(md, precision, frames, boxes) -> dict:
    from medsam_edge.engines.select import open_backend
    from medsam_edge.engines.tensorrt_status import StaleEngines, engine_status

    logger, rec = logging.getLogger("medsam_edge.engines.select"), _Records()
    logger.addHandler(rec)
    try:
        with open_backend(md, "tensorrt", precision, rebuild="never") as b:
            used = b.describe()["rebuilt"] is None
        plan = engine_status(md, precision).path / f"decoder.{precision}.plan"
        plan.write_bytes(plan.read_bytes()[:4096])
        refused = False
        try:
            open_backend(md, "tensorrt", precision, rebuild="never")
        except StaleEngines:
            refused = True
        with open_backend(md, "tensorrt", precision, rebuild="if-stale") as b:
            rebuilt = b.describe()["rebuilt"]
    finally:
        logger.removeHandler(rec)
    return _verdict(used and refused and bool(rebuilt), fresh_used=used, corrupt_refused=refused,
                    rebuilt=rebuilt, log=rec.lines[-4:])
