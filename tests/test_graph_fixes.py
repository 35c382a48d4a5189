"""Speed rewrites of the exported graphs keep their meaning: the LayerNorm2d rewrite on a small
built pattern, the decoder's fast spelling against segment-anything's own modules, and the
exported tiny decoder before/after within the export's parity tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from medsam_edge.contract import EMBEDDING, POINT_COORDS, POINT_LABELS, box_tokens, prompt_tokens
from medsam_edge.export.graph_fixes import layernorm2d_as_layernorm, reorder_gelu
from medsam_edge.export.parity import TOLERANCES

C = 8


def _layernorm2d_model(rank_known: bool = True, axes=(1,)) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """SAM's LayerNorm2d exactly as torch's exporter writes it (opset 18, axes as an input)."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(1, 0.2, C).astype(np.float32), rng.normal(0, 0.2, C).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(list(axes), np.int64), "axes"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(w.reshape(C, 1, 1), "w"), numpy_helper.from_array(b.reshape(C, 1, 1), "b")]
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["xn"]),
        helper.make_node("Mul", ["w", "xn"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("Relu", ["y"], ["out"]),  # a reader after the pattern keeps its input name
    ]
    shape = ["n", C, 5, 6] if rank_known else None
    g = helper.make_graph(nodes, "ln2d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", C, 5, 6])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), w, b


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


def test_layernorm2d_becomes_one_layernormalization_with_the_same_values():
    model, w, b = _layernorm2d_model()
    x = np.random.default_rng(1).normal(3, 2, (2, C, 5, 6)).astype(np.float32)
    before = _run(model, {"x": x})[0]
    assert layernorm2d_as_layernorm(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Transpose", "LayerNormalization", "Transpose", "Relu"]
    assert {t.name for t in model.graph.initializer} == {"y_ln2d_scale", "y_ln2d_bias"}  # the old ones dropped
    after = _run(model, {"x": x})[0]
    u = x.mean(1, keepdims=True)
    want = np.maximum(w[:, None, None] * (x - u) / np.sqrt(((x - u) ** 2).mean(1, keepdims=True) + 1e-6)
                      + b[:, None, None], 0)
    assert np.abs(after - before).max() <= 1e-6 * np.abs(before).max()
    assert np.abs(after - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("case", ["rank unknown", "other axis"])
def test_layernorm2d_rewrite_leaves_lookalikes_alone(case):
    model, _, _ = _layernorm2d_model(rank_known=case != "rank unknown", axes=(2,) if case == "other axis" else (1,))
    assert layernorm2d_as_layernorm(model) == 0
    assert "LayerNormalization" not in [n.op_type for n in model.graph.node]


def _tiny_sam():
    from medsam_edge.export.models import build_model

    return build_model("medsam_vit_tiny", seed=0).eval()


def _token_sets():
    boxes = box_tokens(np.array([[100, 120, 600, 700], [400, 300, 900, 950], [10, 10, 500, 500]], np.float32))
    clicks = [prompt_tokens(None, [[300, 300], [100, 100]], [1, 0]), prompt_tokens(None, [[600, 300], [10, 900]], [1, 1])]
    with_box = [prompt_tokens([50, 60, 500, 600], [[300, 300]], [1])]
    return [boxes] + [tuple(np.stack(t) for t in zip(*group)) for group in (clicks, with_box)]


def test_fast_decoder_spelling_matches_segment_anything():
    from medsam_edge.export.decoder_fast import FastMaskDecoder
    from medsam_edge.export.wrappers import decode_official, embed_tokens

    sam = _tiny_sam()
    fast = FastMaskDecoder(sam.mask_decoder).eval()
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    pe = sam.prompt_encoder
    for coords, labels in _token_sets():
        c, lab = torch.from_numpy(coords), torch.from_numpy(labels)
        with torch.no_grad():
            want, want_iou = decode_official(sam, emb, c, lab)
            got, got_iou = fast(emb, pe.get_dense_pe(), embed_tokens(pe, c, lab), pe.no_mask_embed.weight.reshape(-1))
        assert got.shape == want.shape == (len(coords), 1, 256, 256)
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5
        assert float((got_iou - want_iou).abs().max()) < 1e-5


def test_exported_tiny_decoder_before_and_after_agree_within_parity_tolerance(tiny_model_dir, tmp_path):
    """The fixture's decoder.onnx is the fast spelling; export the official one from the same weights."""
    from medsam_edge.export import checkpoint as ckpt
    from medsam_edge.export.onnx_export import export_decoder

    sam = _tiny_sam()
    ckpt.write_random_checkpoint("medsam_vit_tiny", tmp_path / "r.pth", seed=0)
    ckpt.load_weights(sam, tmp_path / "r.pth", "medsam_vit_tiny")
    export_decoder(sam, tmp_path / "official.onnx", fast=False)
    official, fast = onnx.load(str(tmp_path / "official.onnx")), onnx.load(str(tiny_model_dir.onnx("decoder")))
    assert "ConvTranspose" in {n.op_type for n in official.graph.node}
    assert "ConvTranspose" not in {n.op_type for n in fast.graph.node}
    # Mask token 0 only: one hypernetwork MLP (three Gemm/MatMul layers) instead of four.
    assert sum("output_hypernetworks_mlps" in t.name for t in fast.graph.initializer) < \
        sum("output_hypernetworks_mlps" in t.name for t in official.graph.initializer)
    emb = np.random.default_rng(3).standard_normal((1, 256, 64, 64)).astype(np.float32)
    bound = TOLERANCES["logits_rel_err"][1]
    for coords, labels in _token_sets():
        feed = {EMBEDDING: emb, POINT_COORDS: coords, POINT_LABELS: labels}
        want, want_iou = _run(official, feed)
        got, got_iou = _run(fast, feed)
        assert float(np.abs(got - want).max() / np.abs(want).max()) < bound
        assert float(np.abs(got_iou - want_iou).max()) < 1e-5


def test_exported_tiny_encoder_has_the_layernorm2d_rewritten_and_parity_held(tiny_model_dir):
    enc = onnx.load(str(tiny_model_dir.onnx("encoder")), load_external_data=False)
    ops = [n.op_type for n in enc.graph.node]
    # The ViT neck's two LayerNorm2d; the blocks' own LayerNorms were LayerNormalization already.
    assert ops.count("LayerNormalization") >= 2 and "Pow" not in ops
    assert reorder_gelu(enc) == 0 and layernorm2d_as_layernorm(enc) == 0  # nothing left to rewrite
    parity = tiny_model_dir.manifest["parity"]
    assert parity["passed"] and parity["logits_rel_err"] < TOLERANCES["logits_rel_err"][1]
