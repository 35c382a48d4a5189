"""The GPU layer, checked without a GPU: the precision plan, the static TensorRT check, the
INT8 file's structure (the rebuild policy, providers, IO binding and the TensorRT/CUDA code
against cuda-bindings' real signatures: tests/test_gpu_runtime.py).

FP16 and INT8 files are the ones `calibrate` writes, for the tiny ViT and for LiteMedSAM:
the session's calibrated_tiny and calibrated_lite (conftest.py), not a second pipeline here;
calibration's own run is tested in test_calibration.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medsam_edge.calibration import fp16, int8
from medsam_edge.calibration.plan import GPUS, plan, plan_model, predict
from medsam_edge.cli import main
from medsam_edge.contract import EMBEDDING, POINT_COORDS, POINT_LABELS
from medsam_edge.engines import engine_manifest as em
from medsam_edge.engines.trt_check import model_problems, problems
from medsam_edge.manifest import load_model_dir

from lesions import blob_inputs as _frames



def _onnx_files(md) -> dict[str, Path]:
    """What `calibrate` left in a model directory that TensorRT may build: every ONNX file but
    the CPU-only dynamic INT8 encoder (MatMulInteger is onnxruntime's, not TensorRT's)."""
    return {f.name: f for f in sorted(md.path.glob("*.onnx")) if f.name != "encoder.int8dyn.onnx"}


@pytest.fixture(scope="module")
def tiny_files(calibrated_tiny) -> dict[str, Path]:
    return _onnx_files(calibrated_tiny)


# LiteMedSAM's calibration (a 75 GFLOP encoder) costs minutes on 2 cores: `slow`, so in
# `make test`, not in `make test-fast`; the tiny model's files are checked in both.
@pytest.fixture(scope="module", params=["tiny", pytest.param("lite", marks=pytest.mark.slow)])
def written(request) -> tuple[str, dict[str, Path]]:
    """(model, files) from the session's calibrated models (conftest): the files users get
    from `calibrate`, not a second pipeline here."""
    files = _onnx_files(request.getfixturevalue(f"calibrated_{request.param}"))
    want = {"encoder.onnx", "decoder.onnx", "encoder.fp16.onnx", "decoder.fp16.onnx", "encoder.int8.onnx"}
    assert set(files) == want, (request.param, sorted(files))
    return request.param, files


# --- the precision plan -------------------------------------------------------------


def _hand_graph() -> onnx.ModelProto:
    """Conv FP32, MatMul FP16, MatMul INT8 (both operands dequantized), Einsum FP16, Gemm FP32."""
    rng = np.random.default_rng(0)
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w_conv"),
        numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float16), "w_mm"),
        numpy_helper.from_array(rng.integers(-127, 127, (5, 6)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(6, 0.01, np.float16), "w_q_scale"),
        numpy_helper.from_array(np.zeros(6, np.int8), "w_q_zp"),
        numpy_helper.from_array(np.array(0.05, np.float16), "a_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "a_zp"),
        numpy_helper.from_array(rng.normal(size=(6, 2)).astype(np.float16), "w_ein"),
        numpy_helper.from_array(rng.normal(size=(3, 6)).astype(np.float32), "w_gemm"),
        numpy_helper.from_array(np.array([64, 4], np.int64), "shape"),
        numpy_helper.from_array(np.ones(5, np.float16), "bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", pads=[1, 1, 1, 1]),  # (1,4,8,8)
        helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1], name="t"),
        helper.make_node("Reshape", ["ct", "shape"], ["r"], name="r"),  # (64, 4)
        helper.make_node("Cast", ["r"], ["r16"], to=f16, name="cast16"),
        helper.make_node("MatMul", ["r16", "w_mm"], ["m1"], name="mm_fp16"),  # (64, 5)
        helper.make_node("Add", ["m1", "bias"], ["m1b"], name="add"),  # 320 FP16 elements
        helper.make_node("QuantizeLinear", ["m1b", "a_scale", "a_zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "a_scale", "a_zp"], ["dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_q_scale", "w_q_zp"], ["wdq"], axis=1, name="wdq"),
        helper.make_node("MatMul", ["dq", "wdq"], ["m2"], name="mm_int8"),  # (64, 6)
        helper.make_node("Einsum", ["m2", "w_ein"], ["e"], equation="ij,jk->ik", name="einsum"),  # (64, 2)
        helper.make_node("Cast", ["m2"], ["m2f"], to=f32, name="cast32"),
        helper.make_node("Gemm", ["m2f", "w_gemm"], ["g"], transB=1, name="gemm"),  # (64, 3)
        helper.make_node("Relu", ["g"], ["y"], name="relu"),  # 192 FP32 elements
    ]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", f32, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", f32, [64, 3]),
                               helper.make_tensor_value_info("e", f16, [64, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def test_plan_counts_agree_with_a_hand_count():
    p = plan_model(_hand_graph())
    conv = 2 * (1 * 4 * 8 * 8) * 3 * 3 * 3  # every output element sums C x kh x kw products
    mm_fp16, mm_int8 = 2 * 64 * 5 * 4, 2 * 64 * 6 * 5
    einsum, gemm = 2 * 64 * 6 * 2, 2 * 64 * 3 * 6
    assert p["flops"] == {"INT8": mm_int8, "FP16": mm_fp16 + einsum, "BF16": 0, "FP32": conv + gemm}
    assert p["total_flops"] == conv + mm_fp16 + mm_int8 + einsum + gemm
    assert p["share"]["INT8"] == pytest.approx(mm_int8 / p["total_flops"])
    assert p["matrix_nodes"] == {"INT8": 1, "FP16": 2, "BF16": 0, "FP32": 2}
    # Add on (64, 5) FP16 and Relu on (64, 3) FP32; casts, reshapes and Q/DQ are not counted.
    assert p["other_ops"] == {"FP16": 320, "FP32": 192}
    assert p["largest_fp32_nodes"] == ["conv", "gemm"] and p["uncounted_nodes"] == []


def test_predicted_latency_follows_the_peak_rates_and_the_stated_efficiency():
    p = plan_model(_hand_graph())
    for gpu, spec in GPUS.items():
        r = predict(p, gpu)
        # INT8 runs at twice the FP16 rate on every listed GPU's tensor cores.
        per_flop = {t: r["matrix_ms"][t] / p["flops"][t] for t in ("INT8", "FP16")}
        assert per_flop["FP16"] == pytest.approx(2 * per_flop["INT8"], rel=1e-3)
        assert r["total_ms"] == pytest.approx(sum(r["matrix_ms"].values()) + r["memory_ms"], abs=1e-3)
        faster = predict(p, gpu, {"matrix": 1.0, "memory": 1.0})
        assert faster["total_ms"] < r["total_ms"] and spec.source in r["source"]
    assert predict(p, "Orin")["total_ms"] > predict(p, "A100")["total_ms"] > predict(p, "H100")["total_ms"]
    with pytest.raises(KeyError, match="unknown GPU"):
        predict(p, "V100")


def test_fp16_and_int8_files_meet_the_flop_targets(written):
    model, files = written
    p16 = plan(files["encoder.fp16.onnx"])
    p8 = plan(files["encoder.int8.onnx"])
    p32 = plan(files["encoder.onnx"])
    assert p16["share"]["FP16"] >= 0.99, (model, p16["share"])
    assert p8["share"]["FP32"] <= 0.01, (model, p8["share"])
    # Every quantizable node runs INT8 but the ones the search left in float (FP16).
    rec = load_model_dir(files["encoder.onnx"].parent).manifest["precision"]["int8"]
    assert p8["matrix_nodes"]["INT8"] == rec["quantizable_nodes"] - len(rec["excluded_nodes"]), model
    if model == "lite":  # its target is met with nothing excluded: the full INT8 share
        assert rec["excluded_nodes"] == [] and p8["share"]["INT8"] >= 0.90, p8["share"]
    else:  # the tiny model's strict target excludes a few nodes (test_calibration.py)
        assert rec["excluded_nodes"], rec
    assert p32["share"]["FP32"] == 1.0 and p16["total_flops"] == p8["total_flops"] == p32["total_flops"]
    # The layers between the matrix ops run FP16 too: the point of building INT8 on the FP16 graph.
    assert p8["other_ops"].get("FP32", 0) <= 0.01 * sum(p8["other_ops"].values()), (model, p8["other_ops"])


def test_litemedsam_flops_are_counted_whole(lite_model_dir):
    lite = plan(lite_model_dir.onnx("encoder"))
    assert lite["total_flops"] == pytest.approx(75e9, rel=0.02)  # DESIGN.md's measured 75 GFLOP
    dec = plan(lite_model_dir.onnx("decoder"), {"num_prompts": 2})
    assert dec["uncounted_nodes"] == [] and dec["total_flops"] > plan(lite_model_dir.onnx("decoder"))["total_flops"]


def test_plan_command_prints_every_file(tiny_files, capsys):
    d = tiny_files["encoder.int8.onnx"].parent
    assert main(["plan", str(d), "--gpu", "Orin,H100"]) == 0
    out = capsys.readouterr().out
    for name in ("encoder.onnx", "encoder.fp16.onnx", "encoder.int8.onnx", "decoder.onnx", "decoder.fp16.onnx"):
        assert re.search(rf"^{re.escape(name)}\s+[\d.]+ GFLOP .* Orin [\d.]+ ms\s+H100 [\d.]+ ms$", out, re.M), name
    assert main(["plan", str(d), "--gpu", "V100"]) == 2
    assert "--gpu 'V100'" in capsys.readouterr().err


# --- the INT8 file ------------------------------------------------------------------


def test_int8_file_is_the_fp16_graph_with_input_qdq_only(tiny_files):
    m = onnx.load(str(tiny_files["encoder.int8.onnx"]))
    g = onnx.shape_inference.infer_shapes(m).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input)}
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    assert next(o.version for o in m.opset_import if o.domain == "") == 19
    q, dq = [n for n in g.node if n.op_type == "QuantizeLinear"], [n for n in g.node if n.op_type == "DequantizeLinear"]
    assert q and dq
    for n in dq:
        assert readers.get(n.output[0]), f"{n.name}: dead DequantizeLinear"
        assert all(r.op_type in ("Conv", "MatMul", "Gemm") for r in readers[n.output[0]]), n.name
        assert inits[n.input[1]].dtype == np.float16 and inits[n.input[2]].dtype == np.int8
    for n in q:  # never on a matrix op's output: the input comes from anything but Conv/MatMul
        assert prod.get(n.input[0]) is None or prod[n.input[0]].op_type not in ("Conv", "MatMul", "Gemm"), n.name
    for n in g.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and prod.get(n.input[0], n).op_type == "DequantizeLinear":
            assert prod[n.input[1]].op_type == "DequantizeLinear", n.name
            assert types[n.output[0]] == TensorProto.FLOAT16, n.name
        if n.op_type == "LayerNormalization":
            assert types[n.input[0]] == TensorProto.FLOAT16 and dict(
                (a.name, a.i) for a in n.attribute).get("stash_type", 1) == 1


def test_quantize_keeps_the_fp16_passs_fp32_nodes(tiny_files, tmp_path):
    files = tiny_files
    src = files["encoder.onnx"]
    ln = next(n.name for n in onnx.load(str(src)).graph.node if n.op_type == "LayerNormalization")
    ranges_file = tmp_path / "ranges-minmax.json"  # calibration keeps no ranges cache in the model dir
    int8.collect_ranges(src, _frames(1024, 1), ["minmax"], {"minmax": ranges_file})
    rec = int8.quantize(src, tmp_path / "e.onnx", "minmax", ranges_file, keep_fp32=[ln])
    assert rec["fp32_nodes"] == [ln] and rec["quantized_nodes"] > 0 and rec["skipped"] == {}
    g = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "e.onnx"))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in g.value_info}
    node = next(n for n in g.node if n.name == ln)
    assert types[node.output[0]] == TensorProto.FLOAT
    # What an FP16 file keeps FP32 is read back from it, so the INT8 file can keep the same.
    fp16.write_fp16(src, tmp_path / "e16.onnx", _frames(1024, 1))
    assert ln not in int8.fp32_nodes(tmp_path / "e16.onnx")
    onnx.save(fp16.convert(onnx.load(str(src)), [ln]), str(tmp_path / "kept.onnx"))
    assert ln in int8.fp32_nodes(tmp_path / "kept.onnx")


# --- the static TensorRT check --------------------------------------------------------


def test_every_file_the_project_writes_passes_the_check(written):
    model, files = written
    md = load_model_dir(files["encoder.onnx"].parent)
    shapes = em.profiles(md)
    for name, f in files.items():
        assert problems(f, shapes[name.split(".")[0]]) == [], (model, name)


def test_an_unsupported_op_is_refused_with_one_line_naming_the_node(tiny_files, tmp_path, capsys):
    src = tiny_files["decoder.onnx"]
    m = onnx.load(str(src))
    out = m.graph.output[1].name  # iou (N, 1)
    m.graph.node.append(helper.make_node("Det", [out], ["det"], name="the_det"))
    m.graph.output.append(helper.make_tensor_value_info("det", TensorProto.FLOAT, None))
    found = model_problems(m)
    assert found == ["node 'the_det' (Det): not supported by TensorRT's ONNX parser (onnx-tensorrt operator table)"]
    m.graph.node[-1].domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    assert model_problems(m) == ["node 'the_det' (Det): custom domain 'com.example': TensorRT's ONNX parser has "
                                 "no such operator (it would need a plugin)"]


def _corrupt_zero_point(src: Path, dest: Path) -> str:
    """Copy of an INT8 file with one activation zero point set to 3; returns its Q node's name."""
    m = onnx.load(str(src))
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    zp = helper.make_tensor("bad_zp", TensorProto.INT8, [], [3])
    m.graph.initializer.append(zp)
    q.input[2] = "bad_zp"
    onnx.save(m, str(dest))
    return q.name


def test_a_qdq_with_a_nonzero_zero_point_stops_build_before_tensorrt(tiny_files, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_files["encoder.onnx"].parent, d)
    name = _corrupt_zero_point(d / "encoder.int8.onnx", d / "encoder.int8.onnx")
    found = problems(d / "encoder.int8.onnx")
    assert found == [f"encoder.int8.onnx: node {name!r} (QuantizeLinear): zero point 3: TensorRT supports "
                     "symmetric quantization only (zero points 0)"]
    assert main(["build", str(d), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and "zero point 3" in err
    assert "TensorRT is not usable" not in err  # refused before TensorRT was asked for


def _qdq_graph(x_scale, x_zp, w_axis=1, w_scale_size=6, x_shape=(4, 5)) -> onnx.ModelProto:
    """x (4, 5) -> Q/DQ -> MatMul with a DQ'd (5, 6) weight; the knobs break one rule each."""
    inits = [numpy_helper.from_array(np.ones((5, 6), np.int8), "w"),
             numpy_helper.from_array(np.full(w_scale_size, 0.1, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w_scale_size, np.int8), "wz"),
             numpy_helper.from_array(np.asarray(x_scale, np.float32), "xs")]
    q_inputs = ["x", "xs"]
    if x_zp is not None:
        inits.append(numpy_helper.from_array(np.asarray(x_zp), "xz"))
        q_inputs.append("xz")
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", *q_inputs[1:]], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=w_axis),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_qdq_rules_each_name_the_node():
    assert model_problems(_qdq_graph(0.1, np.int8(0))) == []
    cases = [
        (_qdq_graph(0.1, None), "node 'q' (QuantizeLinear): no zero point: ONNX then quantizes to UINT8"),
        (_qdq_graph(0.1, np.uint8(128)), "node 'q' (QuantizeLinear): zero point of type uint8"),
        (_qdq_graph(-0.1, np.int8(0)), "node 'q' (QuantizeLinear): scale not all positive and finite"),
        (_qdq_graph([0.1] * 5, np.zeros(5, np.int8)), "node 'q' (QuantizeLinear): 5 scales on activation 'x'"),
        (_qdq_graph(0.1, np.int8(0), w_axis=0, w_scale_size=5),
         "node 'wdq' (DequantizeLinear): per-channel axis 0 of weight 'w', but MatMul 'mm' has its output "
         "channels on axis 1"),
    ]
    for model, start in cases:
        found = model_problems(model)
        assert any(p.startswith(start) for p in found), (start, found)


def test_dead_dequantizers_and_old_opsets_are_refused():
    m = _qdq_graph(0.1, np.int8(0))
    m.graph.node.append(helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["unused"], name="dead"))
    assert model_problems(m) == ["node 'dead' (DequantizeLinear): dead Q/DQ (nothing reads 'unused'); TensorRT "
                                 "keeps it as extra layers"]
    m = _qdq_graph(0.1, np.int8(0))
    m.opset_import[0].version = 21
    assert model_problems(m)[0].startswith("opset 21: TensorRT 10's ONNX parser reads opsets 9 to 20")


def test_dynamic_axes_must_be_covered_by_the_profile(tiny_model_dir):
    dec = onnx.load(str(tiny_model_dir.onnx("decoder")))
    shapes = em.profiles(tiny_model_dir)["decoder"]
    assert model_problems(dec, shapes) == []
    partial = {k: v for k, v in shapes.items() if k != POINT_LABELS}
    assert model_problems(dec, partial) == [f"input {POINT_LABELS!r} has dynamic axes [None, None] but no "
                                            "optimisation profile covers it"]
    wrong = {**shapes, EMBEDDING: {k: [1, 256, 32, 32] for k in ("min", "opt", "max")}}
    assert model_problems(dec, wrong)[0] == f"input {EMBEDDING!r} axis 2 is fixed at 64, its profile says 32/32/32"
    extra = {**shapes, "boxes": shapes[POINT_COORDS]}
    assert model_problems(dec, extra) == ["profile for input 'boxes', which the graph does not have"]
