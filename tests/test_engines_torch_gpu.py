"""The PyTorch backend against the exported model, the GPU check's CPU run, and the GPU and
TensorRT runs, which skip with their reason where the hardware or libraries are absent
(engine manifests, staleness and backend choice: tests/test_engines.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from medsam_edge.contract import box_tokens
from medsam_edge.engines import engine_manifest as em

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_torch_backend_reproduces_the_exported_model_on_the_cpu(tiny_model_dir):
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    from medsam_edge.export.torch_backend import TorchBackend

    x = np.random.default_rng(1).random((1, 3, 1024, 1024), dtype=np.float32)
    boxes = np.array([[100, 120, 600, 700], [400, 300, 900, 950]], np.float32)
    ref = TorchBackend(tiny_model_dir.path, fast=True)  # fast is CUDA-only: the CPU stays the reference
    assert ref.describe() == {"backend": "torch", "device": "cpu", "precision": "fp32", "sdpa_modules": 0,
                              "compiled": False}
    ort_b = OnnxruntimeBackend(tiny_model_dir.onnx("encoder"), tiny_model_dir.onnx("decoder"))
    emb = ref.encode(x)
    e_ort = ort_b.encode(x)
    assert np.abs(ref.embedding_to_numpy(emb) - e_ort).max() <= 1e-4 * np.abs(e_ort).max()
    (l_t, i_t), (l_o, i_o) = ref.decode(emb, *box_tokens(boxes)), ort_b.decode(e_ort, *box_tokens(boxes))
    assert l_t.shape == (2, 1, 256, 256) and i_t.shape == (2, 1) and l_t.dtype == np.float32
    assert np.abs(l_t - l_o).max() <= 1e-4 * np.abs(l_o).max() and np.abs(i_t - i_o).max() <= 1e-4
    # Giving the arena back after each call (benchmarks of big encoders) changes no value.
    released = OnnxruntimeBackend(tiny_model_dir.onnx("encoder"), tiny_model_dir.onnx("decoder"), release_memory=True)
    np.testing.assert_array_equal(released.encode(x), e_ort)
    np.testing.assert_array_equal(released.encode(x), e_ort)


def test_sdpa_attention_matches_the_official_modules(tiny_model_dir):
    import torch

    from medsam_edge.export.torch_backend import load_sam, use_sdpa

    sam = load_sam(tiny_model_dir)
    torch.manual_seed(0)
    for name, p in sam.named_parameters():
        if "rel_pos" in name:  # zero at init: randomise so the relative-position bias is exercised
            torch.nn.init.normal_(p, std=0.5)
    x = torch.rand(1, 3, 1024, 1024)
    boxes = torch.tensor([[[100.0, 100.0, 700.0, 800.0]]])
    with torch.inference_mode():
        def run():
            emb = sam.image_encoder(x)
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
            logits, _ = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
            return emb, logits

        emb0, logits0 = run()
        assert use_sdpa(sam) == 9  # 2 ViT blocks + 7 two-way transformer attentions
        emb1, logits1 = run()
    assert (emb1 - emb0).abs().max() <= 1e-4 * emb0.abs().max()
    assert (logits1 - logits0).abs().max() <= 1e-4 * logits0.abs().max()


def test_gpu_check_runs_on_the_cpu_and_reports_skips(tiny_model_dir, tmp_path, capsys):
    """On a CPU-only machine gpu_check still runs its rows through the bench's own path (the
    runtime's Segmenter, postprocessed masks, bench.fidelity) and says what it skipped."""
    from medsam_edge.bench import gpu_check
    from medsam_edge.bench.runners import SEGMENTER_STAGES

    out = tmp_path / "check.json"
    assert gpu_check.main(["--model-dir", str(tiny_model_dir.path), "--out", str(out), "--frames", "1",
                           "--iters", "1", "--boxes", "2"]) == 0
    r = json.loads(out.read_text())
    b = r["backends"]
    row = b["onnxruntime-cpu-fp32"]
    assert row["status"] == "ok" and row["describe"]["processing"] == "opencv"
    assert set(row["latency"]) == set(SEGMENTER_STAGES) and row["latency"]["encode"]["n"] == 1
    # Masks of the frame's size, neither empty nor the whole frame, so their Dice can fail.
    masks = r["reference"]["masks"]
    assert masks["count"] == 2 and masks["nonempty"] == 2 and masks["share_max"] < 0.9
    f = row["fidelity"]
    assert f["masks"] == 2 and f["dice_min"] > 0.99 and f["cosine_min"] > 0.9999 and f["logits_rel_err_max"] < 1e-4
    if not HAS_TRT:
        assert b["tensorrt"] == {"status": "skipped", "reason": "the tensorrt Python package is not installed"}
        assert r["tensorrt_checks"]["tensorrt-layer"]["status"] == "skipped"
    # The static half runs anywhere: TensorRT's rules and the precision plan of every file.
    assert set(r["static"]) == {"encoder.onnx", "decoder.onnx"}
    assert all(s["trt_check"] == [] and s["plan"]["share"]["FP32"] == 1.0 for s in r["static"].values())
    if r["reference"]["describe"]["device"] == "cpu":
        assert b["torch-cuda-fp16-sdpa"]["status"] == "skipped" and "no CUDA" in b["torch-cuda-fp16-sdpa"]["reason"]
    assert ["onnxruntime-cpu-fp32", "ok"] in [ln.split()[:2] for ln in capsys.readouterr().out.splitlines()]


# --- GPU and TensorRT: these run where the hardware and libraries exist, and skip here. ---


def _needs_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be installed on these machines)")
    from medsam_edge.engines.tensorrt_status import usable

    ok, why = usable()
    if not ok:
        pytest.skip(f"TensorRT runner not usable: {why}")


def test_tensorrt_builds_and_matches_onnxruntime(md):
    _needs_tensorrt()
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend
    from medsam_edge.engines.trt_build import build_engines

    out = build_engines(md, ("fp32",), max_prompts=4, progress=False)
    assert (out / "encoder.fp32.plan").is_file() and (out / em.TIMING_CACHE).is_file()
    x = np.random.default_rng(2).random((1, 3, 1024, 1024), dtype=np.float32)
    boxes = np.array([[100, 120, 600, 700]] * 6, np.float32)  # more than max_prompts: runs in chunks
    ref = OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder"))
    l_ref, _ = ref.decode(ref.encode(x), *box_tokens(boxes))
    for graphs in (False, True):
        with TensorrtBackend(md, "fp32", cuda_graphs=graphs) as trt_b:
            logits, iou = trt_b.decode(trt_b.encode(x), *box_tokens(boxes))
            assert logits.shape == l_ref.shape and np.abs(logits - l_ref).max() <= 1e-2 * np.abs(l_ref).max()


def test_tensorrt_refuses_a_truncated_plan_with_rebuild_off(md):
    _needs_tensorrt()
    from medsam_edge.engines.select import open_backend
    from medsam_edge.engines.tensorrt_backend import TensorrtBackend
    from medsam_edge.engines.tensorrt_status import StaleEngines
    from medsam_edge.engines.trt_build import build_engines

    out = build_engines(md, ("fp32",), max_prompts=2, progress=False)
    (out / "encoder.fp32.plan").write_bytes((out / "encoder.fp32.plan").read_bytes()[:1000])
    with pytest.raises(StaleEngines, match=r"encoder\.fp32\.plan differs from the build"):
        TensorrtBackend(md, "fp32")  # the runner never builds
    with pytest.raises(StaleEngines, match=r"encoder\.fp32\.plan differs from the build"):
        open_backend(md, "tensorrt", "fp32", rebuild="never")
    with open_backend(md, "tensorrt", "fp32", rebuild="if-stale") as b:
        assert "differs from the build" in b.describe()["rebuilt"]


def test_torch_fast_path_on_cuda_stays_close_to_the_reference(tiny_model_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    from medsam_edge.export.torch_backend import TorchBackend

    x = np.random.default_rng(3).random((1, 3, 1024, 1024), dtype=np.float32)
    boxes = np.array([[100, 120, 600, 700]], np.float32)
    ref = TorchBackend(tiny_model_dir, device="cuda")
    fast = TorchBackend(tiny_model_dir, device="cuda", fast=True)
    assert fast.describe()["precision"] == "fp16" and fast.sdpa_modules == 9
    l_ref, _ = ref.decode(ref.encode(x), *box_tokens(boxes))
    l_fast, _ = fast.decode(fast.encode(x), *box_tokens(boxes))
    agree = ((l_ref > 0) == (l_fast > 0)).mean()
    assert agree > 0.99
