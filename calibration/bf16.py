"""The BF16 plan: which blocks of the encoder (and whether the decoder) stay FP32 under
OpenVINO's BF16, decided by measurement on real frames.

All-BF16 LiteMedSAM misses the target (mask Dice mean 0.988 against 0.995), so, as the
FP16 search does for ops, blocks are kept FP32 by their effect:
1. Blocks: the graph cut where one activation tensor alone is alive (a block boundary of
   a residual network), named by the exporter's module scopes (pkg.torch.onnx.name_scopes)
   and merged per module-list element ("image_encoder.layers.2.blocks.3").
2. Sensitivity: each block alone at BF16 (the rest FP32), embedding cosine on a few frames.
3. The fewest most-sensitive blocks kept FP32 for the masks to meet the search target on
   the calibration frames (int8.smallest_exclusion), judged through the same Scorer and
   Segmenter as every other precision. Then the decoder at BF16 is kept only if it holds.
The plans (engines/openvino_segments.py) go into manifest.json; the fidelity report
scores them on held-out frames.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from medsam_edge.engines import openvino_segments as segs
from medsam_edge.manifest import sha256_file

from .evaluate import Scorer, _verdict
from .fp16 import Verdict

# The share of the target's allowed Dice loss the search may use on calibration frames: 1,
# the target itself, as the FP16 search (at 0.5 LiteMedSAM kept 14 of 16 blocks FP32;
# docs/decisions.md#bf16-plan-and-precision-auto); the held-out report decides whether auto
# runs the plan. Frames the sensitivity signal encodes per block.
SEARCH_MARGIN = 1.0
SIGNAL_FRAMES = 2
MIN_NODES = 8


def blocks(onnx_path: Path) -> list[dict]:
    """The part's blocks in graph order: [{"name", "end", "nodes"}]; "end" is the tensor
    the block hands on (None for the last: the graph's outputs)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    g = model.graph
    inits = {i.name for i in g.initializer}
    dynamic = {i.name for i in g.input if i.name not in inits}
    outputs = {o.name for o in g.output}
    last_use: dict[str, int] = {}
    for idx, n in enumerate(g.node):
        for t in n.input:
            last_use[t] = idx
    live = set(dynamic)
    pieces: list[tuple[int, str]] = []  # (index of the node ending a piece, the tensor alive after it)
    for idx, n in enumerate(g.node):
        if any(t in dynamic for t in n.input):
            made = [o for o in n.output if o]
            dynamic.update(made)
            live.update(made)
        live = {t for t in live if last_use.get(t, -1) > idx or t in outputs}
        if len(live) == 1:
            (t,) = live
            if t in n.output and t not in outputs:
                pieces.append((idx, t))
    out: list[dict] = []
    start = 0
    for idx, end in [*pieces, (len(g.node) - 1, None)]:
        if idx >= start:
            # Nodes without scopes (added by export's graph fixes) belong to the module before them.
            key = _key(g.node[start:idx + 1]) or (out[-1]["name"] if out else "input")
            if out and out[-1]["name"] == key:
                out[-1]["end"], out[-1]["nodes"] = end, out[-1]["nodes"] + idx + 1 - start
            else:
                out.append({"name": key, "end": end, "nodes": idx + 1 - start})
        start = idx + 1
    return _unique(_merge_small(out))


def _merge_small(out: list[dict]) -> list[dict]:
    """Pieces under MIN_NODES nodes (a permute between stages, a stem conv) join the next
    block (the last joins the one before): a block worth a precision of its own does work."""
    merged: list[dict] = []
    carry: dict | None = None
    for b in out:
        if carry is not None:
            big = b if b["nodes"] >= carry["nodes"] else carry
            b = {"name": big["name"], "end": b["end"], "nodes": b["nodes"] + carry["nodes"]}
            carry = None
        if b["nodes"] < MIN_NODES:
            carry = b
        else:
            merged.append(b)
    if carry is not None:
        if merged:
            last = merged.pop()
            merged.append({"name": last["name"], "end": carry["end"], "nodes": last["nodes"] + carry["nodes"]})
        else:
            merged.append(carry)
    return merged


def _key(nodes) -> str | None:
    """The module a piece of graph belongs to: the second module-list element among most
    of its nodes' scopes ("...layers.1.blocks.0"), else its third scope; None: no scopes."""
    votes: dict[str, int] = {}
    for n in nodes:
        scopes = _scopes(n)
        if not scopes:
            continue
        listed = [s for s in scopes if s.rsplit(".", 1)[-1].isdigit()]
        k = listed[1] if len(listed) > 1 else scopes[min(2, len(scopes) - 1)]
        votes[k] = votes.get(k, 0) + 1
    return max(votes, key=lambda k: votes[k]) if votes else None


def _scopes(n) -> list[str]:
    for p in n.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                v = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            # The last scope is the op itself, not a module.
            return [s for s in v[:-1] if s] if isinstance(v, list) else []
    return []


def _unique(out: list[dict]) -> list[dict]:
    seen: dict[str, int] = {}
    for b in out:
        k = seen[b["name"]] = seen.get(b["name"], 0) + 1
        if k > 1:
            b["name"] = f"{b['name']}#{k}"
    return out


def make_plan(part: str, onnx_path: Path, found: list[dict], fp32: set[int]) -> dict:
    """The plan for `found` blocks with the indices in `fp32` kept FP32, the rest BF16."""
    return {"format": segs.PLAN_FORMAT, "part": part, "onnx_sha256": sha256_file(onnx_path),
            "blocks": [{"name": b["name"], "end": b["end"], "precision": "fp32" if i in fp32 else "bf16"}
                       for i, b in enumerate(found)]}


def search_target(target: dict) -> dict:
    return {k: 1.0 - SEARCH_MARGIN * (1.0 - b) for k, b in target.items()}


def plan_search(md, scorer: Scorer, target: dict, threads: int | None,
                log: Callable[[str], None] = lambda s: None) -> dict:
    """The encoder's and decoder's BF16 plans and the record of how they were found."""
    # Each trial compiles a backend: its INFO lines would break into the search's own lines.
    engines = logging.getLogger("medsam_edge.engines")
    level = engines.level
    engines.setLevel(logging.WARNING)
    try:
        return _search(md, scorer, target, threads, log)
    finally:
        engines.setLevel(level)


def _search(md, scorer: Scorer, target: dict, threads: int | None, log: Callable[[str], None]) -> dict:
    from medsam_edge.engines.openvino_backend import OpenvinoBackend

    from .int8 import smallest_exclusion

    enc, dec = md.onnx("encoder"), md.onnx("decoder")
    found = blocks(enc)
    goal = search_target(target)
    dec_fp32 = segs.whole("decoder", "fp32")
    log(f"encoder: {len(found)} blocks, cut where one activation alone is alive")

    def opened(plans: dict) -> OpenvinoBackend:
        return OpenvinoBackend(enc, dec, "bf16", threads, plans=plans)

    def judged(fp32: set[int], decoder: dict = dec_fp32) -> Verdict:
        with opened({"encoder": make_plan("encoder", enc, found, fp32), "decoder": decoder}) as b:
            return _verdict(scorer.score(b, b), goal, b.name)

    base = judged(set())
    log(f"all BF16 (decoder FP32): Dice mean {base.figures['dice']['mean']:.4f}, "
        f"worst {base.figures['dice']['worst']:.4f}")
    rec: dict = {"search_target": goal, "all_bf16": _brief(base), "blocks": [b["name"] for b in found],
                 "ranking": [], "search": []}
    keep: list[int] = []
    v = base
    if not base.passed:
        losses = []
        for i in range(len(found)):
            alone = set(range(len(found))) - {i}
            with opened({"encoder": make_plan("encoder", enc, found, alone), "decoder": dec_fp32}) as b:
                s = scorer.score(b, masks=False, limit=SIGNAL_FRAMES)
            c = float(np.mean(s.cosine))
            losses.append(1.0 - c if np.isfinite(c) else float("inf"))
        order = sorted(range(len(found)), key=lambda i: -losses[i])
        rec["ranking"] = [{"block": found[i]["name"], "cosine_loss": losses[i]} for i in order]
        log("most sensitive at BF16: " + ", ".join(found[i]["name"] for i in order[:4]))
        keep, v, rec["search"] = smallest_exclusion(order, lambda ks: judged(set(ks)),
                                                    lambda t: log(t.replace("node(s) in float", "block(s) FP32")))
    fp32 = set(keep)
    enc_plan = make_plan("encoder", enc, found, fp32)
    dec_bf16 = segs.whole("decoder", "bf16")
    d = judged(fp32, dec_bf16)
    dec_plan = dec_bf16 if d.passed else dec_fp32
    log(f"encoder: {len(fp32)} of {len(found)} blocks FP32 -> Dice mean {v.figures['dice']['mean']:.4f}; "
        f"decoder at BF16: Dice mean {d.figures['dice']['mean']:.4f} -> decoder "
        f"{'BF16' if d.passed else 'FP32'}")
    rec["passed_on_calibration"] = bool(v.passed)
    rec["decoder_bf16"] = _brief(d)
    rec["figures"] = _brief(d if d.passed else v)
    return {"encoder": {"plan": enc_plan, **rec},
            "decoder": {"plan": dec_plan, "all_bf16": _brief(d), "passed": bool(d.passed)},
            "plan_id": segs.plan_id({"encoder": enc_plan, "decoder": dec_plan})}


def _brief(v: Verdict) -> dict:
    f = v.figures
    return {"loss": v.loss, "passed": bool(v.passed), "dice": f.get("dice"),
            "embedding_cosine": f.get("embedding_cosine")}
