"""Calibration: FP16 and INT8 ONNX files, their searches and the fidelity report (frames
and bad input: tests/test_calibration_inputs.py).

The session's one calibrated tiny model (conftest.calibrated_tiny: a strict INT8 target
forces the sensitivity search to leave nodes in float) is read here, not made again. Frames are synthetic pictures made here and pydicom's bundled ultrasound
cine, never ../shared data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from medsam_edge.calibration import fp16, int8
from medsam_edge.calibration.fp16 import Verdict
from medsam_edge.calibration.frames import sample_frames
from medsam_edge.contract import IMAGE
from medsam_edge.manifest import load_model_dir
from medsam_edge.metrics import rel_err

from conftest import DICOM


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory) -> Path:
    """A copy of the session's tiny export: the bad-input test checks nothing is written into it."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    shutil.copytree(tiny_model_dir.path, out)
    return out


@pytest.fixture(scope="module")
def data(calibration_frames) -> dict:
    return calibration_frames


@pytest.fixture(scope="module")
def calibrated(calibrated_tiny) -> Path:
    """The session's one calibrated tiny model (conftest.calibrated_tiny): STRICT_INT8 there
    makes the INT8 searches leave a few nodes in float."""
    return calibrated_tiny.path


# --- FP16 ---------------------------------------------------------------------------


def _io_types(path: Path) -> set[int]:
    g = onnx.load(str(path)).graph
    return {v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)}


def test_fp16_files_have_fp32_io_and_run_close_to_fp32(calibrated, data):
    md = load_model_dir(calibrated)
    for part in ("encoder", "decoder"):
        path = md.onnx(part, "fp16")
        assert _io_types(path) == {TensorProto.FLOAT}
        inits = {i.data_type for i in onnx.load(str(path)).graph.initializer}
        assert TensorProto.FLOAT16 in inits
    fs = sample_frames([str(data["img"])], md.preprocess, count=8, min_frames=4)
    x = fs.tensor(0)
    run = lambda p, feed: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)[0]  # noqa: E731
    ref, half = run(md.onnx("encoder"), {IMAGE: x}), run(md.onnx("encoder", "fp16"), {IMAGE: x})
    assert half.dtype == np.float32 and rel_err(half, ref) < 1e-2


def test_fp16_range_rule_keeps_an_overflowing_node_fp32(tmp_path):
    # (x*300)^2 reaches 9e4 > 65504: the square and the root reading it must stay FP32.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["a"], name="scale"),
        helper.make_node("Pow", ["a", "two"], ["b"], name="square"),
        helper.make_node("Sqrt", ["b"], ["y"], name="root"),
    ]
    inits = [numpy_helper.from_array(np.array(300, np.float32), "k"), numpy_helper.from_array(np.array(2, np.float32), "two")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    feed = {"x": np.full((1, 8), 1.0, np.float32)}
    record = fp16.write_fp16(src, tmp_path / "m.fp16.onnx", [feed])
    kept = {n["name"] for n in record["fp32_nodes"]}
    assert kept == {"square", "root"}
    out = ort.InferenceSession(str(tmp_path / "m.fp16.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(out, 300.0, rtol=1e-3)
    # Without the measurement the square would be stored as FP16, which cannot hold it.
    # (onnxruntime's CPU provider hides this by running Pow/Sqrt in FP32: TensorRT would not.)
    naive = onnx.shape_inference.infer_shapes(fp16.convert(model, []))
    types = {v.name: v.type.tensor_type.elem_type for v in naive.graph.value_info}
    assert types["b"] == TensorProto.FLOAT16 and 9e4 > float(np.finfo(np.float16).max)


# --- INT8 ---------------------------------------------------------------------------


def _producers(g) -> dict:
    return {o: n for n in g.node for o in n.output}


def test_int8_has_symmetric_qdq_on_conv_matmul_only(calibrated):
    md = load_model_dir(calibrated)
    g = onnx.load(str(md.onnx("encoder", "int8"))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prod = _producers(g)
    excluded = {n["name"] for n in md.manifest["precision"]["int8"]["excluded_nodes"]}
    quantized = [n for n in g.node if n.op_type in ("Conv", "MatMul") and n.name not in excluded]
    assert quantized, "nothing was quantized"
    for n in quantized:
        assert all(prod[i].op_type == "DequantizeLinear" for i in n.input[:2] if i in prod), n.name
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point not symmetric int8 0"
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" for i in n.input), n.name
        if n.op_type not in ("Conv", "MatMul", "Gemm", "QuantizeLinear", "DequantizeLinear"):
            # Residual adds, GELU and reshapes read the float tensor, not its INT8 rounding.
            rounded = [i for i in n.input if i in prod and prod[i].op_type == "DequantizeLinear"
                       and prod[i].input[0] in prod and prod[prod[i].input[0]].op_type == "QuantizeLinear"]
            assert not rounded, (n.op_type, n.name)
    per_channel = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1]
    assert per_channel, "no per-channel weight scales"


def test_int8_sensitivity_leaves_excluded_nodes_float(calibrated):
    md = load_model_dir(calibrated)
    rec = md.manifest["precision"]["int8"]
    assert rec["excluded_nodes"], "the strict target should have forced nodes into float"
    assert rec["ranking"] and rec["search"] and rec["method"] == "minmax"
    g = onnx.load(str(md.onnx("encoder", "int8"))).graph
    prod, nodes = _producers(g), {n.name: n for n in g.node}
    for e in rec["excluded_nodes"]:
        n = nodes[e["name"]]
        assert not any(i in prod and prod[i].op_type == "DequantizeLinear" for i in n.input), e["name"]


def test_int8_searches_hold_candidates_to_a_margin_inside_the_target(calibrated):
    from medsam_edge.calibration.int8 import SEARCH_MARGIN

    prec = load_model_dir(calibrated).manifest["precision"]
    target = prec["targets"]["int8"]
    for part in ("int8", "int8dyn"):
        rec = prec[part]
        assert set(rec["search_target"]) == set(target)
        for k, bound in target.items():
            assert rec["search_target"][k] == pytest.approx(1 - SEARCH_MARGIN * (1 - bound)) and rec["search_target"][k] > bound
    # Every trial the search accepted met the tighter bound on the mean (its loss is 1 - mean
    # Dice plus a thousandth of the relative errors).
    passed = [t for t in prec["int8"]["search"] if t["passed"]]
    assert passed and all(t["loss"] <= 1 - prec["int8"]["search_target"]["mean"] + 2e-3 for t in passed)


class _Feeds:
    """Frames as both readers want them: iterable (our sweep) and onnxruntime's
    CalibrationDataReader with strided ranges."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames, self._pos, self._end = frames, 0, len(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter({IMAGE: f} for f in self.frames)

    def get_next(self):
        if self._pos >= self._end:
            return None
        self._pos += 1
        return {IMAGE: self.frames[self._pos - 1]}

    def rewind(self) -> None:
        self._pos, self._end = 0, len(self.frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pos, self._end = start_index, min(end_index, len(self.frames))


def _small_encoder(path: Path) -> None:
    """64 px image -> Conv -> Relu -> Conv -> Relu -> tokens -> MatMul -> Relu -> MatMul: the
    encoder's quantized op types at a size that calibrates in a blink."""
    rng = np.random.default_rng(3)
    w = lambda name, *shape: numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)  # noqa: E731
    inits = [w("c1", 8, 3, 3, 3), w("c2", 8, 8, 3, 3), w("m1", 8, 16), w("m2", 16, 4),
             numpy_helper.from_array(np.array([1, 8, 64 * 64], np.int64), "shape")]
    nodes = [helper.make_node("Conv", [IMAGE, "c1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "c2"], ["b"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Reshape", ["rb", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tokens", "m1"], ["c"]), helper.make_node("Relu", ["c"], ["rc"]),
             helper.make_node("MatMul", ["rc", "m2"], ["y"])]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, [1, 3, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64 * 64, 4])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_grouped_ranges_equal_onnxruntimes_own_calibrator(tmp_path):
    """The bounded-memory sweep (a budget that splits the tensors into groups) gives the ranges
    onnxruntime's calibrator computes from whole frames fed one at a time (its strided mode),
    for every method. A small two-Conv two-MatMul model: the equality is about the sweep, not
    the encoder's size."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    from medsam_edge.calibration import ranges

    src = tmp_path / "small.onnx"
    _small_encoder(src)
    rng = np.random.default_rng(0)
    # Frames of differing contrast, so each method's range differs from the others'.
    feeds = _Feeds([(rng.random((1, 3, 64, 64)) * (0.5 + k) - 0.2 * k).astype(np.float32) for k in range(6)])
    methods = ("minmax", "entropy", "percentile")
    ours = {m: tmp_path / f"ours-{m}.json" for m in methods}
    info = ranges.write_caches(src, feeds, methods, ours, int8.QUANT_OPS, budget=1 << 17)
    assert info["groups"] > 1 and info["frames"] == len(feeds) and info["tensors"] >= 4
    kinds = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    for m in methods:
        theirs = tmp_path / f"theirs-{m}.json"
        feeds.rewind()
        quantize_static(str(src), str(tmp_path / "q.onnx"), feeds, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(int8.QUANT_OPS), calibrate_method=kinds[m],
                        extra_options={"CalibTensorRangeSymmetric": True, "CalibStridedMinMax": 1,
                                       "CalibPercentile": 99.99},
                        calibration_cache_path=str(theirs))
        a, b = load_tensors_data(ours[m]), load_tensors_data(theirs)
        assert set(a.keys()) == set(b.keys()) and len(a.keys()) == info["tensors"]
        for name in b.keys():
            lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in b[name].range_value)
            got = [float(np.asarray(v).reshape(-1)[0]) for v in a[name].range_value]
            np.testing.assert_allclose(got, [lo, hi], rtol=1e-5, atol=1e-7, err_msg=f"{m} {name}")


def test_a_candidate_passes_only_where_every_backend_meets_the_target(tiny, data, tmp_path):
    from medsam_edge.calibration.boxes import load_prompts
    from medsam_edge.calibration.evaluate import Scorer, judge
    from medsam_edge.engines.loaders import open_files
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend

    md = load_model_dir(tiny)
    fs = sample_frames([str(data["img"])], md.preprocess, 6, 0.3, cache_dir=str(data["cache"]), min_frames=1)
    cal = fs.calibration[:3]
    scorer = Scorer(fs, cal, load_prompts(fs, cal, (), (str(data["mask"]),)),
                    open_files(md.onnx("encoder"), md.onnx("decoder")))
    # A second backend whose arithmetic is far off: onnxruntime over the encoder with its
    # weights scrambled, standing in for a runtime whose kernels lose what the first keeps.
    model = onnx.load(str(md.onnx("encoder")))
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32 and w.size > 16:
            t.CopyFrom(numpy_helper.from_array(rng.permutation(w.ravel()).reshape(w.shape), t.name))
    bad = tmp_path / "scrambled.onnx"
    onnx.save(model, str(bad))
    target = {"mean": 0.99, "p5": 0.95}
    dec = open_files(decoder=md.onnx("decoder"))

    def scrambled(path):
        backend = OnnxruntimeBackend(bad, md.onnx("decoder"))
        backend.name = "scrambled"
        return backend

    alone = judge(scorer, "encoder", dec, target)(md.onnx("encoder"))
    both = judge(scorer, "encoder", dec, target, also=[scrambled])(md.onnx("encoder"))
    assert alone.passed and list(alone.figures["judged"]) == ["onnxruntime-cpu"]
    assert not both.passed and both.figures["backend"] == "scrambled" and both.loss > alone.loss
    assert both.figures["judged"]["onnxruntime-cpu"]["passed"]
    # A candidate the first backend fails is not scored on the others.
    calls = []
    failed = judge(scorer, "encoder", dec, target, also=[lambda p: calls.append(p) or scrambled(p)])(bad)
    assert not failed.passed and calls == [] and list(failed.figures["judged"]) == ["onnxruntime-cpu"]


def test_int8_search_judges_the_backends_it_is_given(calibrated, tiny):
    from medsam_edge.calibration.backends import availability
    from medsam_edge.calibration.run import Options, _also

    # The fixture's search was given onnxruntime only: no trial was judged anywhere else.
    trials = load_model_dir(calibrated).manifest["precision"]["int8"]["search"]
    assert trials and all(list(t["judged"]) == ["onnxruntime-cpu"] for t in trials)
    # By default every other CPU backend that runs the file judges it too, on its own arithmetic.
    md, said = load_model_dir(tiny), []
    openers = _also(md, "int8", Options(), said.append)
    if availability("openvino-cpu", "int8") is not None:
        assert openers == [] and said == []
        return
    assert len(openers) == 1 and "openvino-cpu" in said[0]
    with openers[0](md.onnx("encoder")) as backend:
        assert backend.name == "openvino-cpu" and backend.precision == "int8"
    assert _also(md, "int8dyn", Options(), said.append) == []  # OpenVINO does not run that format


def test_smallest_exclusion_finds_the_fewest_nodes():
    order = [f"n{i}" for i in range(40)]
    calls = []

    def judged(excl):
        calls.append(len(excl))
        return Verdict(loss=max(0, 11 - len(excl)), passed=len(excl) >= 11)

    excl, v, trials = int8.smallest_exclusion(order, judged)
    assert excl == order[:11] and v.passed and len(trials) == len(calls) <= 9


def test_a_pool_that_meets_the_target_fails_when_one_source_misses_its_mean():
    from medsam_edge.calibration.evaluate import Scores, meets, meets_by_source
    from medsam_edge.calibration.report import _by_source

    # Ten easy frames of one vendor hide two poor ones of another in the pooled figures.
    s = Scores(dice=[1.0] * 10 + [0.95, 0.95], dice_source=["a"] * 10 + ["b"] * 2)
    target = {"mean": 0.97, "p5": 0.93}
    by = s.summary()["dice_by_source"]
    assert meets(s.summary()["dice"], target) and not meets_by_source(by, target)
    assert by["b"]["mean"] == pytest.approx(0.95) and by["a"]["worst"] == 1.0
    assert meets_by_source(by, {"mean": 0.95, "p5": 0.99}) and meets_by_source(by, {"worst": 0.99})
    rep = {"precisions": {"int8": {"backends": {"openvino-cpu": {"dice_by_source": by}}}}}
    assert "| int8 @ openvino-cpu | 1.0000 (1.000) | 0.9500 (0.950) |" in _by_source(rep)


# --- report and manifest ------------------------------------------------------------


def test_report_files_written_and_manifest_records_precision(calibrated, data):
    from medsam_edge.calibration.backends import CPU_BACKENDS, availability

    rep = json.loads((calibrated / "fidelity.json").read_text())
    assert set(rep["precisions"]) == {"fp32", "fp16", "int8", "int8dyn", "bf16"}
    for p, row in rep["precisions"].items():
        for b, v in row["backends"].items():
            # Every CPU backend that can run the file here did, and the row says which one it was.
            assert ("not_run" in v) == (availability(b, p) is not None), (p, b)
            if "not_run" not in v:
                # The 4 evaluation pictures, one box each from its mask; one source, so its
                # per-source figures are the row's.
                assert v["frames"] == v["boxes"] == v["truth"]["boxes"] == 4, (p, b)
                assert v["dice_by_source"] == {str(data["eval"]): v["dice"]}, (p, b)
    assert rep["precisions"]["fp32"]["backend"] == "onnxruntime-cpu"
    assert rep["precisions"]["fp32"]["dice"]["mean"] > 0.999  # ONNX FP32 vs the PyTorch reference
    assert rep["precisions"]["int8dyn"]["backends"]["openvino-cpu"]["not_run"]  # onnxruntime's own format
    assert "PyTorch" in rep["reference"] and rep["frames"]["sources"] == [str(data["eval"])]
    # Latency rows: FP32 and each file this run made, on every CPU backend that runs it, each
    # speed-up the ratio of its own medians.
    lat = rep["latency"]
    made = ("fp32", "fp16", "int8", "int8dyn", "bf16")
    assert set(lat["encoder"]) == {f"{p}@{b}" for p in made for b in CPU_BACKENDS if availability(b, p) is None}
    assert lat["rounds"] == 1
    ort32 = lat["encoder"]["fp32@onnxruntime-cpu"]["median_ms"]
    for row in lat["encoder"].values():
        assert row["speedup_vs_onnxruntime_fp32"] == pytest.approx(ort32 / row["median_ms"], rel=1e-6)
    md_text = (calibrated / "fidelity.md").read_text()
    assert "| int8 | onnxruntime-cpu | encoder.int8.onnx |" in md_text and "sources the calibration never saw" in md_text
    assert set(rep["precisions"]["int8"]["dice_by_source"]) == {str(data["eval"])}
    prec = load_model_dir(calibrated).manifest["precision"]
    # Options(count=10, eval_count=4): 10 calibration frames from the two sources, 4 held out.
    split = [f["split"] for f in prec["frames"]["frames"]]
    assert prec["frames"]["calibration"] == split.count("calibration") == 10
    assert prec["frames"]["holdout"] == split.count("holdout") == 4
    assert sorted(prec["frames"]["calibration_sources"]) == sorted([str(data["img"]), DICOM])
    assert prec["fp16"]["encoder"]["tool"].startswith("onnxconverter-common")
    assert not list(calibrated.glob(".calibrate.*"))


def test_calibrated_files_pass_the_static_tensorrt_check_and_meet_the_flop_targets(calibrated):
    from medsam_edge.calibration.plan import plan
    from medsam_edge.engines import engine_manifest as em
    from medsam_edge.engines.trt_check import problems

    md = load_model_dir(calibrated)
    shapes = em.profiles(md)
    files = sorted(md.path.glob("*.onnx"))
    assert {"encoder.fp16.onnx", "encoder.int8.onnx"} <= {f.name for f in files}
    for f in files:
        if f.name != "encoder.int8dyn.onnx":  # onnxruntime CPU only: MatMulInteger is not TensorRT's
            assert problems(f, shapes[f.name.split(".")[0]]) == [], f.name
    assert plan(md.onnx("encoder", "fp16"))["share"]["FP16"] >= 0.99
    # The strict target leaves a few nodes unquantized: they run FP16, not FP32.
    assert plan(md.onnx("encoder", "int8"))["share"]["FP32"] <= 0.01
