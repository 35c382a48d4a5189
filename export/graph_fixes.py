"""Small rewrites of the exported ONNX graph that keep its meaning and its standard ops.

torch's exporter writes exact GELU as 0.5 * (1 + erf(x / sqrt 2)), then * x. onnxruntime's
GeluFusion only recognises the product taken the other way round (x * (1 + erf(...)),
then * 0.5), so the exported encoders ran GELU as five separate element-wise passes. The
rewrite swaps the two multiplications; the graph stays plain ONNX (opset 18), which
TensorRT parses and fuses on its own.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper


def reorder_gelu(model: onnx.ModelProto) -> int:
    """Rewrite every exported exact-GELU tail into the order onnxruntime fuses; returns how many."""
    g = model.graph
    consts = _scalars(model)
    prod = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    changed = 0
    for erf in [n for n in g.node if n.op_type == "Erf"]:
        div = prod.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _is(consts, div.input[1], math.sqrt(2)):
            continue
        x = div.input[0]
        add = _only_reader(readers, erf.output[0], "Add")
        half = add and _only_reader(readers, add.output[0], "Mul")
        last = half and _only_reader(readers, half.output[0], "Mul")
        if not (add and half and last and _other(add, erf.output[0]) is not None
                and _is(consts, _other(add, erf.output[0]), 1.0)
                and _is(consts, _other(half, add.output[0]), 0.5) and _other(last, half.output[0]) == x):
            continue
        c_half = _other(half, add.output[0])
        # half becomes x * (1 + erf), last becomes (that) * 0.5; names and outputs stay.
        half.input[:] = [x, add.output[0]]
        last.input[:] = [half.output[0], c_half]
        changed += 1
    return changed


def _scalars(model: onnx.ModelProto) -> dict[str, float]:
    out = {}
    for t in model.graph.initializer:
        if int(np.prod(t.dims)) == 1:
            out[t.name] = float(numpy_helper.to_array(t).reshape(-1)[0])
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            a = numpy_helper.to_array(n.attribute[0].t)
            if a.size == 1:
                out[n.output[0]] = float(a.reshape(-1)[0])
    return out


def _is(consts: dict[str, float], name: str | None, value: float) -> bool:
    return name in consts and abs(consts[name] - value) <= 1e-5 * abs(value)


def _only_reader(readers: dict, name: str, op: str):
    r = readers.get(name, [])
    return r[0] if len(r) == 1 and r[0].op_type == op else None


def _other(node, name: str) -> str | None:
    """The other input of a two-input node that reads `name`."""
    ins = list(node.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1] if ins[0] == name else ins[0]
