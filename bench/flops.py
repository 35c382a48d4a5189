"""The compute floor: FLOPs counted by torch, and this machine's measured matrix rate.

FLOPs come from torch.utils.flop_counter.FlopCounterMode on the model built on the
meta device: the counter works from shapes, so counting ViT-B costs no arithmetic and
no weights. The matrix rate is measured here (best of a few large FP32 matmuls), not
taken from a datasheet, so "distance from the floor" compares like with like.
"""

from __future__ import annotations

import time


def count(model_id: str, boxes: int = 1) -> dict:
    """Encoder FLOPs per frame and decoder FLOPs per call with `boxes` boxes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medsam_edge.contract import model_spec
    from medsam_edge.export.models import build_model

    size = model_spec(model_id).preprocess.size
    with torch.device("meta"):
        # requires_grad off: the counter's module tracker expects grad_fns on outputs otherwise.
        sam = build_model(model_id).eval().requires_grad_(False)
        image = torch.zeros(1, 3, size, size)
        box = torch.zeros(boxes, 1, 4)
    with FlopCounterMode(display=False) as fc:
        embedding = sam.image_encoder(image)
    encoder = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        pe = sam.prompt_encoder
        sparse, dense = pe(points=None, boxes=box, masks=None)
        sam.mask_decoder(image_embeddings=embedding, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                         dense_prompt_embeddings=dense, multimask_output=False)
    return {"model_id": model_id, "input_size": size, "encoder_flops": int(encoder),
            "decoder_flops": int(fc.get_total_flops()), "decoder_boxes": boxes,
            "method": "torch.utils.flop_counter.FlopCounterMode on the meta device"}


def matmul_rate(n: int = 2048, repeats: int = 5) -> dict:
    """FP32 matmul GFLOP/s with torch (the same BLAS the reference uses) and numpy."""
    import numpy as np

    out = {"size": n, "repeats": repeats}
    flops = 2.0 * n**3
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    out["numpy_gflops"] = _best(lambda: a @ b, flops, repeats)
    try:
        import torch
    except ImportError:
        out["torch_gflops"] = None
    else:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch_gflops"] = _best(lambda: torch.matmul(ta, tb), flops, repeats)
        out["torch_threads"] = torch.get_num_threads()
    rates = [r["best"] for r in (out["numpy_gflops"], out.get("torch_gflops")) if r]
    # The floor is the best this machine showed: a row cannot beat what the hardware did.
    out["gflops"] = max(rates)
    return out


def _best(fn, flops: float, repeats: int) -> dict:
    fn()  # warm-up: thread pool start, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best": round(flops / min(times) / 1e9, 2), "median": round(flops / sorted(times)[len(times) // 2] / 1e9, 2)}


def floor_ms(flops: int, gflops: float) -> float:
    return round(flops / (gflops * 1e9) * 1e3, 3)
