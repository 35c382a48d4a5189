"""Every CPU backend that can run a precision's files here, as engines backends.

The fidelity report scores each file on each of them, because a reduced-precision figure
is only as true as the arithmetic that produced it: onnxruntime's CPU provider computes
an FP16 file in FP32 and runs Q/DQ as fake quantization (a proxy for TensorRT's
arithmetic), OpenVINO runs Q/DQ with integer kernels and the FP32 files at BF16 where the
CPU has it. Each row of the report names the backend its figures came from.
"""

from __future__ import annotations

from medsam_edge.contract import PRECISIONS

CPU_BACKENDS = ("onnxruntime-cpu", "openvino-cpu")


def availability(name: str, precision: str) -> str | None:
    """None when backend `name` runs `precision` here, else the one-line reason it cannot."""
    from medsam_edge.engines.select import find_backends

    if name.split("-")[0] not in PRECISIONS[precision].runs_on:
        return f"{name} does not run {precision} files"
    found = {a.name: a for a in find_backends()}
    if not found[name].available:
        return found[name].reason
    if name == "openvino-cpu":
        from medsam_edge.engines.openvino_backend import precision_support

        ok, why = precision_support(precision)
        return None if ok else why
    return None
