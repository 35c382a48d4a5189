"""One calibration run: frames -> FP16 and INT8 files -> fidelity report, all or nothing.

Every file is made in a hidden staging folder inside the model directory and moved into
place only after the report is done, so a failed or interrupted run leaves the model
directory as it was (no half-written model next to good ones).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from medsam_edge.contract import EMBEDDING, IMAGE, POINT_COORDS, POINT_LABELS, PRECISIONS
from medsam_edge.engines.loaders import open_files
from medsam_edge.engines.onnxruntime_backend import LARGE_INPUT_SIDE
from medsam_edge.manifest import ModelDir
from medsam_edge.progress import Steps

from . import fp16, int8, report
from .backends import CPU_BACKENDS, availability
from .boxes import load_prompts
from .evaluate import TARGETS, Scorer, cosine_signal, judge
from .frames import MIN_FRAMES, FrameReader, FrameSet, sample_frames
from .latency import encoder_latency
from .plan import model_dir_plan
from .reference import open_reference

# The precisions a run makes files for (contract.PRECISIONS has every one a model may have).
MADE_HERE = ("fp16", "int8")
# What the report scores, beside FP32: this run's files or an earlier run's, and bf16
# (the FP32 files at BF16 inference precision, where a backend here runs it).
REPORTED = ("fp16", "int8", "int8dyn", "bf16")
RANGE_FRAMES = 16  # INT8 range frames at most (_int8)


@dataclass
class FrameOptions:
    """Which frames: sampled from the sources (frames.sample_frames), and their prompts."""

    count: int = 32
    holdout: float = 0.25
    eval_sources: tuple = ()
    eval_count: int = 64
    box_files: tuple = ()
    mask_dirs: tuple = ()
    cache_dir: str | None = None
    min_frames: int = MIN_FRAMES


@dataclass
class SearchOptions:
    """How hard the FP16 and INT8 searches look."""

    methods: tuple = int8.METHODS
    search_frames: int = 12  # calibration frames the searches judge on
    range_frames: int = 4  # frames for FP16 range measurement
    max_trials: int = int8.MAX_TRIALS
    margin: float = int8.SEARCH_MARGIN
    backends: tuple = CPU_BACKENDS  # whose arithmetic judges a candidate, onnxruntime-cpu first


@dataclass
class Options:
    precisions: tuple = MADE_HERE
    frames: FrameOptions = field(default_factory=FrameOptions)
    search: SearchOptions = field(default_factory=SearchOptions)
    dynamic: bool = True  # also write the CPU-only encoder.int8dyn.onnx
    latency_rounds: int = 7
    checkpoint: str | None = None
    threads: int | None = None
    quiet: bool = False
    targets: dict | None = None  # per precision, e.g. {"int8": {"mean": 0.97, "p5": 0.93}}; None: TARGETS

    def target(self, precision: str) -> dict:
        return {**TARGETS, **(self.targets or {})}[precision]

    def search_target(self, precision: str) -> dict:
        """What the INT8 searches hold a candidate to on calibration frames: each bound's
        allowed loss (1 - bound) scaled by the margin. The report keeps target()."""
        return {k: 1.0 - self.search.margin * (1.0 - b) for k, b in self.target(precision).items()}


def calibrate(md: ModelDir, sources: list[str], o: Options) -> dict:
    """Write the asked precisions into `md` and its fidelity report; returns the report."""
    steps = Steps(4 + len(o.precisions) + (1 if "int8" in o.precisions and o.dynamic else 0), quiet=o.quiet)
    # Details go on their own lines under the step; the step's time follows the last one.
    log = (lambda s: None) if o.quiet else (lambda s: print(f"\n    {s}", end="", file=sys.stderr, flush=True))
    with steps.step("sampling calibration frames"):
        fs = sample_frames(sources, md.preprocess, o.frames.count, o.frames.holdout, o.frames.eval_sources, o.frames.eval_count,
                           cache_dir=o.frames.cache_dir, min_frames=o.frames.min_frames)
        log(f"{len(fs.calibration)} calibration, {len(fs.holdout)} held-out frames")
    _clear_stale(md.path)
    staging = Path(tempfile.mkdtemp(prefix=f".calibrate.{os.getpid()}.", dir=md.path))
    try:
        with steps.step("FP32 reference on calibration frames"):
            # Every calibration source in the search where the count allows: a search judged
            # on a few sources keeps the nodes those need, not the ones another vendor's need.
            cal = fs.spread(fs.calibration, o.search.search_frames)
            search = Scorer(fs, cal, load_prompts(fs, cal, o.frames.box_files, o.frames.mask_dirs),
                            open_files(md.onnx("encoder"), md.onnx("decoder"), threads=o.threads))
        record: dict = {"frames": fs.describe(), "targets": {p: o.target(p) for p in TARGETS}}
        written: dict[str, Path] = {}
        if "fp16" in o.precisions:
            with steps.step("FP16 encoder and decoder (ranges, then error search)"):
                record["fp16"] = _fp16(md, fs, search, staging, written, o, log)
        if "int8" in o.precisions:
            with steps.step("INT8 encoder (calibration methods, sensitivity, exclusion)"):
                record["int8"] = _int8(md, fs, search, staging, written, o, log)
            if o.dynamic:
                with steps.step("INT8 dynamic encoder for the CPU"):
                    record["int8dyn"] = _int8dyn(md, search, staging, written, record["int8"], o, log)
        # The search's FP32 sessions are done with: free them before the report opens more.
        search = None
        with steps.step("fidelity on held-out frames"):
            rep = _report(md, fs, written, o)
        with steps.step("latency and writing files"):
            rep["latency"] = _latency(md, fs, written, o)
            for f in written.values():
                os.replace(f, md.path / f.name)
            # What TensorRT's strong typing will make of each file, stated statically.
            rep["precision_plan"] = _plan_summary(model_dir_plan(md.path))
            record["plan"] = rep["precision_plan"]
            # Precisions not redone this time keep their files and their record.
            old = md.manifest.get("precision") or {}
            report.write(md, rep, {**{k: v for k, v in old.items() if k in REPORTED}, **record})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not o.quiet:
        report.print_summary(rep)
    return rep


def _clear_stale(path: Path) -> None:
    """Remove staging folders of runs that were killed (their finally never ran)."""
    for d in path.glob(".calibrate.*.*"):
        pid = d.name.split(".")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staged(staging: Path, part: str, precision: str) -> Path:
    """Where this run writes `part` of `precision`: the contract's own file name for it (never
    the FP32 file that stands in for a missing one)."""
    return staging / PRECISIONS[precision].files[part][0]


def _fp16(md, fs: FrameSet, search: Scorer, staging: Path, written: dict, o: Options, log) -> dict:
    fp32_dec = open_files(decoder=md.onnx("decoder"), threads=o.threads)
    feeds = [{IMAGE: fs.tensor(r.index)} for r in search.refs[: o.search.range_frames]]
    enc = _staged(staging, "encoder", "fp16")
    log("encoder:")
    rec_e = fp16.write_fp16(md.onnx("encoder"), enc, feeds,
                            judge(search, "encoder", fp32_dec, o.target("fp16"), o.threads), log)
    dfeeds = [dict(zip((EMBEDDING, POINT_COORDS, POINT_LABELS), (r.embedding, *r.tokens())))
              for r in search.refs[: o.search.range_frames]]
    dec = _staged(staging, "decoder", "fp16")
    log("decoder:")
    rec_d = fp16.write_fp16(md.onnx("decoder"), dec, dfeeds,
                            judge(search, "decoder", None, o.target("fp16"), o.threads), log)
    written["encoder.fp16"], written["decoder.fp16"] = enc, dec
    return {"encoder": {"file": enc.name, **rec_e}, "decoder": {"file": dec.name, **rec_d}}


def _int8(md, fs: FrameSet, search: Scorer, staging: Path, written: dict, o: Options, log) -> dict:
    src = md.onnx("encoder")
    model = onnx.load(str(src))
    nodes = int8.quantizable(model)
    fp32_dec = open_files(decoder=md.onnx("decoder"), threads=o.threads)
    judged_path = judge(search, "encoder", fp32_dec, o.search_target("int8"), o.threads, _also(md, "int8", o, log))
    trial = staging / "trial.int8.onnx"
    caches = {m: staging / f"ranges-{m}.json" for m in o.search.methods}
    # Ranges cost a histogram pass over every calibrated tensor of every frame
    # (docs/decisions.md#calibration-frames): at most RANGE_FRAMES, spread over the sources;
    # the search and the report still use every frame.
    ranged = fs.spread(fs.calibration, RANGE_FRAMES)
    if len(ranged) < len(fs.calibration):
        log(f"ranges: {len(ranged)} of the {len(fs.calibration)} calibration frames, spread over the sources")
    swept = int8.collect_ranges(src, FrameReader(fs, ranged), o.search.methods, caches, o.threads, log)
    # The INT8 file is the FP16 graph plus Q/DQ: it keeps the FP16 pass's measured FP32
    # nodes (this run's, else an earlier run's file; without either, the range rule alone).
    fp16_file = written.get("encoder.fp16") or (md.onnx("encoder", "fp16") if md.onnx("encoder", "fp16").is_file()
                                                 else None)
    keep = int8.fp32_nodes(fp16_file) if fp16_file is not None else None
    methods = {}
    for m in o.search.methods:
        int8.quantize(src, trial, m, caches[m], keep_fp32=keep)
        v = judged_path(trial)
        methods[m] = {"loss": v.loss, "passed": v.passed, "dice": v.figures["dice"],
                      "embedding_cosine": v.figures["embedding_cosine"]}
        log(f"{m}: every Conv/MatMul quantized -> Dice mean {v.figures['dice']['mean']:.4f}, "
            f"p5 {v.figures['dice']['p5']:.4f}")
    best = min(methods, key=lambda m: methods[m]["loss"])
    cache = caches[best]
    rec: dict = {"method": best, "methods": methods, "scheme": int8.scheme(), "calibration": swept,
                 "search_target": o.search_target("int8"), "quantizable_nodes": len(nodes),
                 "activation_matmuls": len(int8.activation_matmuls(model)), "ranking": [], "search": []}
    exclude: list[str] = []
    if not methods[best]["passed"]:
        ranking = int8.rank_nodes(src, nodes, best, cache, cosine_signal(search, threads=o.threads),
                                  o.search.max_trials, log)

        def judged(excl):
            int8.quantize(src, trial, best, cache, excl, keep_fp32=keep)
            return judged_path(trial)

        exclude, v, rec["search"] = int8.smallest_exclusion([r["node"] for r in ranking], judged, log)
        rec["ranking"] = ranking
        rec["passed_on_calibration"] = v.passed
    else:
        rec["passed_on_calibration"] = True
    out = _staged(staging, "encoder", "int8")
    rec["quantized"] = int8.quantize(src, out, best, cache, exclude, keep_fp32=keep)
    trial.unlink(missing_ok=True)
    ops = {n.name: n.op_type for n in model.graph.node}
    rec["excluded_nodes"] = [{"name": n, "op": ops[n]} for n in exclude]
    written["encoder.int8"] = out
    return {"file": out.name, "decoder": "no INT8 decoder (about 5% of LiteMedSAM's and under 1% of ViT-B's "
            "compute, so INT8 would not pay for its risk): TensorRT builds the INT8 engines with decoder.fp16.onnx "
            "where it exists, the CPU backends run decoder.onnx", **rec}


def _also(md, precision: str, o: Options, log) -> list:
    """Openers of every CPU backend besides onnxruntime that runs `precision` here, for the
    search to judge a candidate on each: the report holds every backend to the target."""
    openers = []
    for b in o.search.backends:
        if b != "onnxruntime-cpu" and availability(b, precision) is None:
            log(f"the search judges each candidate on onnxruntime-cpu, then on {b}")
            openers.append(lambda path, b=b: _quietly(open_files, path, md.onnx("decoder"), b, precision, o.threads))
    return openers


def _quietly(f, *args):
    """f(*args) with the engines' INFO lines held back: a search compiles a backend each
    trial, and its start-up lines would break into the search's own progress lines."""
    logger = logging.getLogger("medsam_edge.engines")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        return f(*args)
    finally:
        logger.setLevel(level)


def _int8dyn(md, search: Scorer, staging: Path, written: dict, rec8: dict, o: Options, log) -> dict:
    src = md.onnx("encoder")
    out = _staged(staging, "encoder", "int8dyn")
    judged_path = judge(search, "encoder", open_files(decoder=md.onnx("decoder"), threads=o.threads),
                        o.search_target("int8"), o.threads, _also(md, "int8dyn", o, log))
    int8.quantize_dynamic_cpu(src, out)
    v, exclude, trials = judged_path(out), [], []
    if not v.passed and rec8.get("ranking"):
        ops = {n.name: n.op_type for n in onnx.load(str(src)).graph.node}
        order = [r["node"] for r in rec8["ranking"] if ops[r["node"]] != "Conv"]  # dynamic leaves Conv float

        def judged(excl):
            int8.quantize_dynamic_cpu(src, out, excl)
            return judged_path(out)

        exclude, v, trials = int8.smallest_exclusion(order, judged, log)
        int8.quantize_dynamic_cpu(src, out, exclude)
    log(f"dynamic: Dice mean {v.figures['dice']['mean']:.4f}, {len(exclude)} node(s) in float")
    written["encoder.int8dyn"] = out
    return {"file": out.name, "target": "onnxruntime CPU only (MatMulInteger; TensorRT does not build it)",
            "tool": "onnxruntime.quantization.quantize_dynamic(MatMul/Gemm, per_channel, QInt8 weights)",
            "search_target": o.search_target("int8"), "passed_on_calibration": v.passed,
            "excluded_nodes": exclude, "search": trials}


def _report(md, fs: FrameSet, written: dict, o: Options) -> dict:
    ho = fs.holdout
    prompts = load_prompts(fs, ho, o.frames.box_files, o.frames.mask_dirs)
    ref, text = open_reference(md, o.checkpoint)
    sc = Scorer(fs, ho, prompts, ref)
    ref.close()
    pairs = _pairs(md, written)
    release = md.preprocess.size >= LARGE_INPUT_SIDE
    scores: dict[str, dict] = {}
    for p, (e, d) in pairs.items():
        scores[p] = {}
        for b in CPU_BACKENDS:
            why = availability(b, p)
            if why is not None:
                scores[p][b] = why
                continue
            with open_files(e, d, b, p, o.threads, release_memory=release) as backend:
                scores[p][b] = sc.score(backend, backend)
    files = {p: {"encoder": e.name, "decoder": d.name} for p, (e, d) in pairs.items()}
    n_boxes = sum(len(prompts[i]) for i in ho)
    n_truth = sum(p.truth is not None for i in ho for p in prompts[i])
    frames = {"holdout": len(ho), "boxes": n_boxes, "truth_boxes": n_truth,
              "box_origin": {k: sum(p.origin == k for i in ho for p in prompts[i]) for k in ("mask", "file", "derived")},
              "sources": sorted({fs.meta[i]["source"] for i in ho}),
              "holdout_sources_unseen": fs.describe()["holdout_sources_unseen"]}
    return report.build(md, text, scores, files, sc.reference_truth(), frames, None,
                        {p: o.target(p) for p in TARGETS})


def _plan_summary(plans: dict) -> dict:
    """Per file: FLOP shares per arithmetic type and the predicted latency per GPU (the full
    plan, with per-op counts, is `medsam-edge plan MODEL_DIR --json`)."""
    return {name: {"gflops": round(p["total_flops"] / 1e9, 2), "share": p["share"],
                   "predicted_ms": {g: round(v["total_ms"], 3) for g, v in p["predicted"].items()}}
            for name, p in plans.items()}


def _pairs(md, written: dict) -> dict[str, tuple]:
    """Precision -> (encoder, decoder) files to score: this run's (from staging), else ones an
    earlier run left in the model directory, as the contract's table names them."""
    out = {"fp32": (md.onnx("encoder"), md.onnx("decoder"))}
    staged = {f.name: f for f in written.values()}
    for p in REPORTED:
        pair = []
        for part in ("encoder", "decoder"):
            mine = [staged[n] for n in PRECISIONS[p].files[part] if n in staged]
            pair.append(mine[0] if mine else md.onnx(part, p))
        if all(f.is_file() for f in pair):
            out[p] = tuple(pair)
    return out


def _latency(md, fs: FrameSet, written: dict, o: Options) -> dict | None:
    if o.latency_rounds <= 0:
        return None
    files: dict[str, dict] = {}
    for p, pair in _pairs(md, written).items():
        if p != "fp32" and f"encoder.{p}" not in written and p != "bf16":
            continue  # only what this run made, beside FP32 (and bf16, which has no files)
        for b in CPU_BACKENDS:
            if availability(b, p) is None:
                files.setdefault(b, {})[p] = pair
    if sum(len(v) for v in files.values()) < 2:
        return None
    return encoder_latency(files, fs.tensor(fs.holdout[0]), o.latency_rounds, threads=o.threads,
                           release_memory=md.preprocess.size >= LARGE_INPUT_SIDE)
