"""Opening a backend on ONNX files: the one place that turns "these files, this backend,
this precision, these threads" into a running Backend.

The loader/runner split of NVIDIA's Polygraphy: a loader decides what is opened (files,
provider, precision, caches); the Backend it returns only runs it. The runtime
(select.open_backend, which first picks the files from a model directory and the backend
from what is available), calibration (a candidate encoder beside the FP32 decoder, a
staging copy on every CPU backend), export's parity check and the bench all open the
ONNX backends here, so a file is judged on the same session options it runs with.
TensorRT engines and Triton servers are not files: select.open_backend opens those.
"""

from __future__ import annotations

from pathlib import Path

from medsam_edge.engines.base import Backend
from medsam_edge.errors import InputError

OPENVINO = "openvino-cpu"
ONNXRUNTIME = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt")
FILE_BACKENDS = (*ONNXRUNTIME, OPENVINO)


def open_files(encoder: str | Path | None = None, decoder: str | Path | None = None, name: str = "onnxruntime-cpu",
               precision: str = "fp32", threads: int | None = None, decoder_threads: int | None = None, *,
               release_memory: bool | None = None, model_dir=None, plans: dict | None = None) -> Backend:
    """A backend `name` over these ONNX files.

    encoder / decoder: either may be None on onnxruntime (a one-part backend: calibration
    pairs a candidate encoder with the FP32 decoder, or the reference's embeddings with a
    candidate decoder); OpenVINO compiles both parts.
    precision: the key of contract.PRECISIONS the files are (OpenVINO sets its inference
    precision from it; it is what describe() reports).
    threads / decoder_threads: CPU threads of the encoder / decoder (decoder_threads None:
    the same as threads; both None: the library's default, every core).
    release_memory: onnxruntime gives the encoder's working memory back after every call;
    None: for encoders of input side >= LARGE_INPUT_SIDE only (a process that keeps several
    ViT-B encoders open).
    model_dir: the ModelDir the files belong to, for what lives beside them: compiled
    caches under its engines/ folder, the decoder's TensorRT profile shapes and the input
    size its manifest promises. None (a staging copy, a file outside a model directory):
    no cache is kept and each file is checked against the contract by its own inputs.
    plans: OpenVINO at bf16: per part, the BF16 plan keeping some blocks FP32
    (engines/openvino_segments.py); None: the model directory's own (manifest.json's
    precision.bf16), else the whole part at BF16.
    """
    if name == OPENVINO:
        from medsam_edge.engines.openvino_backend import OpenvinoBackend

        if encoder is None or decoder is None:
            raise ValueError("OpenVINO compiles an encoder and a decoder: give both files")
        cache = None if model_dir is None else Path(model_dir.path) / "engines" / "openvino_cache"
        if plans is None and model_dir is not None and precision == "bf16":
            from medsam_edge.engines.openvino_segments import stored_plans

            plans = stored_plans(model_dir.manifest)
        return OpenvinoBackend(Path(encoder), Path(decoder), precision, threads, decoder_threads, cache, plans=plans)
    if name in ONNXRUNTIME:
        from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend

        profiles, cache, size = None, None, None
        if model_dir is not None:
            from medsam_edge.engines import engine_manifest as em

            profiles, size = em.profiles(model_dir), model_dir.preprocess.size
            cache = Path(model_dir.path) / "engines" / "ort_trt_cache"
        return OnnxruntimeBackend(encoder, decoder, precision, threads, decoder_threads, cache, name=name,
                                  release_memory=release_memory, trt_profiles=profiles, input_size=size)
    raise InputError(f"backend {name!r} does not open ONNX files; choose one of {', '.join(FILE_BACKENDS)}")
