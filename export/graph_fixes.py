"""Small rewrites of the exported ONNX graph that keep its meaning and its standard ops.

torch's exporter writes exact GELU as 0.5 * (1 + erf(x / sqrt 2)), then * x. onnxruntime's
GeluFusion only recognises the product taken the other way round (x * (1 + erf(...)),
then * 0.5), so the exported encoders ran GELU as five separate element-wise passes. The
rewrite swaps the two multiplications; the graph stays plain ONNX (opset 18), which
TensorRT parses and fuses on its own.

SAM's LayerNorm2d (the ViT neck, LiteMedSAM's TinyViT neck) is written by hand as a mean
over the channel axis, the squared deviation's mean, a square root, a division and a
per-channel affine: eight passes over an NCHW tensor that no runtime here fuses
(onnxruntime ran them as ReduceMean/Sub/Pow/Div kernels). It becomes one
LayerNormalization over the channel axis between two transposes.

Not here: a kernel-2/stride-2 ConvTranspose as a 1x1 Conv plus DepthToSpace was measured
slower on onnxruntime (the DepthToSpace shuffle costs more than the col2im it saves); the
decoder's upscaling is instead traced in token-major order (export/decoder_fast.py).
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


def layernorm2d_as_layernorm(model: onnx.ModelProto) -> int:
    """Rewrite SAM's hand-written LayerNorm2d (mean over channels, squared deviation's mean,
    sqrt, divide, per-channel affine: eight element-wise passes over an NCHW tensor) as one
    LayerNormalization over the channel axis between two transposes; returns how many.

    Same arithmetic (population variance, epsilon inside the square root); the fused kernel
    reads the tensor twice instead of about ten times.
    """
    g = model.graph
    consts = _scalars(model)
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    changed = 0
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(g.value_info) + list(g.input)
             if v.type.tensor_type.HasField("shape")}
    for mean in [n for n in g.node if n.op_type == "ReduceMean"]:
        x = mean.input[0]
        # The transposes need an NCHW tensor: a rank the graph does not state is left alone.
        if ranks.get(x) != 4 or not _reduces_channels(model, mean, inits):
            continue
        sub = _only_reader(readers, mean.output[0], "Sub")
        if sub is None or list(sub.input) != [x, mean.output[0]]:
            continue
        d = sub.output[0]
        r = {n.op_type: n for n in readers.get(d, [])}
        if len(readers.get(d, [])) != 2 or set(r) != {"Pow", "Div"}:
            continue
        pow_, div = r["Pow"], r["Div"]
        var = _only_reader(readers, pow_.output[0], "ReduceMean")
        add_eps = var and _only_reader(readers, var.output[0], "Add")
        sqrt = add_eps and _only_reader(readers, add_eps.output[0], "Sqrt")
        if not (pow_.input[0] == d and _is(consts, pow_.input[1], 2.0) and var and _reduces_channels(model, var, inits)
                and add_eps and _other(add_eps, var.output[0]) in consts and sqrt
                and list(div.input) == [d, sqrt.output[0]]):
            continue
        mul = _only_reader(readers, div.output[0], "Mul")
        add = mul and _only_reader(readers, mul.output[0], "Add")
        scale = mul and _channel_vector(inits, _other(mul, div.output[0]))
        bias = add and _channel_vector(inits, _other(add, mul.output[0]))
        if scale is None or bias is None or scale.shape != bias.shape:
            continue
        eps = consts[_other(add_eps, var.output[0])]
        name = add.output[0]
        pos = list(g.node).index(add)
        new = [
            onnx.helper.make_node("Transpose", [x], [f"{name}_ln2d_nhwc"], perm=[0, 2, 3, 1]),
            onnx.helper.make_node("LayerNormalization", [f"{name}_ln2d_nhwc", _add_init(model, f"{name}_ln2d_scale", scale),
                                  _add_init(model, f"{name}_ln2d_bias", bias)], [f"{name}_ln2d_out"],
                                  axis=-1, epsilon=float(eps)),
            onnx.helper.make_node("Transpose", [f"{name}_ln2d_out"], [name], perm=[0, 3, 1, 2]),
        ]
        for k, node in enumerate(new):
            g.node.insert(pos + 1 + k, node)
        for node in (mean, sub, pow_, var, add_eps, sqrt, div, mul, add):
            g.node.remove(node)
        changed += 1
    if changed:
        _drop_unused_initializers(model)
    return changed


def _reduces_channels(model: onnx.ModelProto, n, inits: dict) -> bool:
    """A ReduceMean over axis 1 only, keeping dims (opset 18 gives axes as an input)."""
    a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
    if a.get("keepdims", 1) != 1:
        return False
    if len(n.input) > 1 and n.input[1]:
        axes = numpy_helper.to_array(inits[n.input[1]]).reshape(-1).tolist() if n.input[1] in inits else None
    else:
        axes = list(a.get("axes", []))
    return axes == [1]


def _channel_vector(inits: dict, name: str | None):
    """A (C,1,1) or (1,C,1,1) constant as a (C,) float32 vector, else None."""
    if name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    if a.ndim not in (3, 4) or a.shape[-2:] != (1, 1) or (a.ndim == 4 and a.shape[0] != 1):
        return None
    return np.ascontiguousarray(a.reshape(-1), np.float32)


def _add_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
