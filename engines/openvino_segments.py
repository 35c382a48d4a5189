"""BF16 with some blocks kept FP32 on OpenVINO: a part's graph cut at block boundaries.

OpenVINO sets one inference precision per compiled model, and an all-BF16 LiteMedSAM
encoder misses the fidelity target (mask Dice mean 0.988 against 0.995; docs/decisions.md#bf16-plan-and-precision-auto).
A plan (written by `medsam-edge calibrate --precision bf16`, stored in manifest.json under
precision.bf16.<part>.plan) lists the part's blocks in graph order, each ending at a tensor
that is the only activation alive there, with the precision each runs at. Consecutive blocks
of one precision are compiled together as one segment; the segments run one after another,
each feeding its single output to the next. No onnx package here: the cuts are made on
OpenVINO's own reading of the ONNX file (it keeps the ONNX tensor names).

Plan format 1:
    {"format": 1, "part": "encoder", "onnx_sha256": "...",
     "blocks": [{"name": "image_encoder.patch_embed", "end": "tensor name", "precision": "bf16"},
                ..., {"name": "image_encoder.neck", "end": null, "precision": "fp32"}]}
"end" null: the graph's outputs (the last block); the first block starts at the graph's inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from medsam_edge.errors import InputError

PLAN_FORMAT = 1
# Our precision names -> OpenVINO's inference precision hint.
HINTS = {"bf16": "bf16", "fp32": "f32"}


@dataclass(frozen=True)
class Segment:
    """Consecutive blocks of one precision: from tensor `start` (None: the graph's inputs) to
    tensor `end` (None: the graph's outputs)."""

    start: str | None
    end: str | None
    precision: str
    blocks: tuple

    @property
    def hint(self) -> str:
        return HINTS[self.precision]


def whole(part: str, precision: str) -> dict:
    """A plan of one block: the whole part at `precision`."""
    return {"format": PLAN_FORMAT, "part": part, "blocks": [{"name": part, "end": None, "precision": precision}]}


def plan_id(plans: dict | None) -> str | None:
    """A short fingerprint of the plans (per part), so a fidelity figure can name the plan it
    was measured on and a changed plan is never judged by an old figure."""
    if not plans:
        return None
    text = json.dumps({k: v for k, v in sorted(plans.items()) if v}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_plan(plan: dict, where: str) -> None:
    """A malformed plan is a one-line InputError naming where it came from."""
    ok = (isinstance(plan, dict) and plan.get("format") == PLAN_FORMAT and isinstance(plan.get("blocks"), list)
          and plan["blocks"] and all(isinstance(b, dict) and b.get("precision") in HINTS for b in plan["blocks"])
          and plan["blocks"][-1].get("end") is None
          and all(isinstance(b.get("end"), str) for b in plan["blocks"][:-1]))
    if not ok:
        raise InputError(f"{where}: not a BF16 plan of format {PLAN_FORMAT}; run `medsam-edge calibrate MODEL_DIR "
                         "--precision bf16` again")


def segments(plan: dict) -> list[Segment]:
    """The plan's blocks merged into runs of one precision (fewer compiled models, fewer hand-overs)."""
    out: list[Segment] = []
    start = None
    for b in plan["blocks"]:
        if out and out[-1].precision == b["precision"]:
            last = out.pop()
            out.append(Segment(last.start, b["end"], last.precision, last.blocks + (b["name"],)))
        else:
            out.append(Segment(start, b["end"], b["precision"], (b["name"],)))
        start = b["end"]
    return out


def stored_plans(manifest: dict) -> dict | None:
    """{"encoder": plan, "decoder": plan} from manifest.json's precision.bf16, or None."""
    rec = (manifest.get("precision") or {}).get("bf16") or {}
    plans = {p: (rec.get(p) or {}).get("plan") for p in ("encoder", "decoder") if isinstance(rec.get(p), dict)}
    return {k: v for k, v in plans.items() if v} or None


def fp32_share(plan: dict) -> tuple[int, int]:
    """(blocks kept FP32, blocks in all)."""
    return sum(b["precision"] == "fp32" for b in plan["blocks"]), len(plan["blocks"])


def _output(model, name: str, where: str):
    for op in model.get_ordered_ops():
        for out in op.outputs():
            if name in out.get_names():
                return out
    raise InputError(f"{where}: the BF16 plan cuts at tensor {name!r}, which this ONNX file does not have; "
                     "run `medsam-edge calibrate MODEL_DIR --precision bf16` again")


def submodel(core, onnx_path, seg: Segment):
    """OpenVINO's model of the segment: the graph read afresh, its input cut at `start` (a new
    parameter takes that tensor's place) and its output at `end`."""
    import openvino as ov
    import openvino.opset13 as ops

    model = core.read_model(str(onnx_path))
    where = str(onnx_path)
    if seg.start is None:
        params = list(model.get_parameters())
    else:
        src = _output(model, seg.start, where)
        param = ops.parameter(src.get_partial_shape(), src.get_element_type(), name=seg.start)
        for target in list(src.get_target_inputs()):
            target.replace_source_output(param.output(0))
        param.output(0).set_names({seg.start})
        params = [param]
    results = list(model.get_results()) if seg.end is None else [ops.result(_output(model, seg.end, where))]
    return ov.Model(results, params, f"{model.get_friendly_name()}[{seg.start}:{seg.end}]")


class Chain:
    """Compiled segments run in order; infer(feeds) -> {output name: array} of the last one.

    One request per segment, made once. A segment's output goes to the next without a copy
    (the next request reads it before anything overwrites it); the last outputs are copied,
    since the caller keeps them."""

    def __init__(self, compiled: list, segs: list[Segment]) -> None:
        self.compiled = compiled
        self.segments = segs
        self._requests = [c.create_infer_request() for c in compiled]
        self._outs = [list(c.outputs) for c in compiled]

    def infer(self, feeds: dict) -> dict:
        last = len(self._requests) - 1
        for i, req in enumerate(self._requests):
            out = req.infer(feeds, share_inputs=True, share_outputs=i < last)
            if i < last:
                feeds = {self.segments[i + 1].start: out[self._outs[i][0]]}
        return {o.get_any_name(): out[o] for o in self._outs[last]}

    def close(self) -> None:
        self._requests = []
        self.compiled = []
