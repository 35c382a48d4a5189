"""config.pbtxt text for the three models of a repository, from the tensor contract.

Names, dtypes and shapes come from medsam_edge.contract; a dynamic axis is -1 in Triton's
dims and its (min, opt, max) from contract.AXES is recorded as a parameter (Triton has
no field for a range: TensorRT plans carry it in their profile, the stream model
enforces it). The output is protobuf text format, parsed by tritonclient's
model_config_pb2 in the tests.
"""

from __future__ import annotations

from medsam_edge.contract import AXES, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_OUTPUTS, TensorSpec, encoder_inputs
from medsam_edge.engines import triton_protocol as P

TRITON_DTYPES = {"float32": "TYPE_FP32", "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL"}
PLATFORMS = ("onnxruntime", "tensorrt", "python")
# What the encoder and decoder models are in each platform (the stream model is always Python).
_MODEL_KIND = {
    "onnxruntime": ('platform: "onnxruntime_onnx"', "model.onnx", "KIND_GPU"),
    "tensorrt": ('platform: "tensorrt_plan"', "model.plan", "KIND_GPU"),
}


class Enum(str):
    """A protobuf enum value: written bare, not quoted."""


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_pbtxt(msg: dict, indent: int = 0) -> str:
    """A nested dict -> protobuf text format. A list of dicts is a repeated message, a list of
    scalars a repeated scalar; str values are quoted unless they are an Enum."""
    pad = "  " * indent
    lines = []
    for key, v in msg.items():
        if isinstance(v, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(v, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(x) for x in v)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(v)}")
    return "\n".join(x for x in lines if x)


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    shape = spec.shape[1:] if batched else spec.shape
    return [-1 if isinstance(d, str) else int(d) for d in shape]


def tensor(spec: TensorSpec, batched: bool = False, optional: bool = False) -> dict:
    t = {"name": spec.name, "data_type": Enum(TRITON_DTYPES[spec.dtype]), "dims": _dims(spec, batched)}
    if optional:
        t["optional"] = True
    return t


def parameters(values: dict) -> list[dict]:
    """Triton's string parameters map (what a Python model reads from args['model_config'])."""
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def axis_parameters() -> dict:
    return {f"{axis}_range": ",".join(str(x) for x in rng) for axis, rng in AXES.items()}


def encoder_config(name: str, platform: str, size: int, instances: int, max_batch: int | None) -> str:
    """max_batch None: the ONNX has a fixed batch of 1 (what export writes), so Triton cannot
    stack requests into one call; the encoder then scales by instances, not batches."""
    head, filename, kind = _MODEL_KIND[platform]
    batched = max_batch is not None
    cfg = {"name": name, "_head": head, "max_batch_size": max_batch or 0, "default_model_filename": filename,
           "input": [tensor(s, batched) for s in encoder_inputs(size)],
           "output": [tensor(s, batched) for s in ENCODER_OUTPUTS],
           "instance_group": [{"count": instances, "kind": Enum(kind)}]}
    if batched:
        cfg["dynamic_batching"] = {"preferred_batch_size": [max_batch], "max_queue_delay_microseconds": 2000}
    return _text(cfg)


def decoder_config(name: str, platform: str, instances: int) -> str:
    head, filename, kind = _MODEL_KIND[platform]
    cfg = {"name": name, "_head": head, "max_batch_size": 0, "default_model_filename": filename,
           "input": [tensor(s) for s in DECODER_INPUTS],
           "output": [tensor(s) for s in DECODER_OUTPUTS],
           "instance_group": [{"count": instances, "kind": Enum(kind)}],
           "parameters": parameters(axis_parameters())}
    return _text(cfg)


def stream_config(name: str, size: int, params: dict) -> str:
    """The stream model: Python backend, one instance (the cache lives in its process), decoupled
    so that one stream's decode never waits for another request's encode."""
    ids = TensorSpec(P.STREAM_ID, "uint64", (1,))
    cfg = {"name": name, "backend": "python", "max_batch_size": 0,
           "input": [tensor(ids),
                     *(tensor(s, optional=True) for s in encoder_inputs(size)),
                     tensor(TensorSpec(P.OF_GENERATION, "uint64", (1,)), optional=True),
                     *(tensor(s, optional=True) for s in DECODER_INPUTS[1:]),
                     tensor(TensorSpec(P.RELEASE, "bool", (1,)), optional=True)],
           "output": [tensor(TensorSpec(P.GENERATION, "uint64", (1,))), *(tensor(s) for s in DECODER_OUTPUTS)],
           "instance_group": [{"count": 1, "kind": Enum("KIND_CPU")}],
           "model_transaction_policy": {"decoupled": True},
           "parameters": parameters({**params, **axis_parameters()})}
    return _text(cfg)


def _text(cfg: dict) -> str:
    head = cfg.pop("_head", None)
    body = to_pbtxt(cfg)
    if head:
        # platform goes right after the name, where Triton's own examples put it.
        first, _, rest = body.partition("\n")
        body = f"{first}\n{head}\n{rest}"
    return body + "\n"
