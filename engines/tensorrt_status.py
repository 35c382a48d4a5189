"""Whether TensorRT can run here, and whether this machine's engines are there: asked by
select.open_backend and `info` before any runner is made (engines/tensorrt_backend.py runs
them; it never builds)."""

from __future__ import annotations

from medsam_edge.engines import engine_manifest as em
from medsam_edge.engines.cuda import current_gpu, driver_mismatch, ok, runtime
from medsam_edge.errors import InputError
from medsam_edge.manifest import ModelDir


class StaleEngines(InputError):
    """No usable engines for this GPU, TensorRT version and precision; `status` says why."""

    def __init__(self, message: str, status: em.EngineStatus) -> None:
        super().__init__(message)
        self.status = status


def usable() -> tuple[bool, str]:
    """(True, what) if tensorrt and cuda-python import and a CUDA device answers; else why not."""
    try:
        import tensorrt as trt
    except Exception as e:  # PyPI's stub package fails with its own errors, not only ImportError
        text = str(e).strip()
        return False, f"tensorrt does not import ({text.splitlines()[0][:160] if text else type(e).__name__})"
    version = getattr(trt, "__version__", None)
    if not isinstance(version, str):  # a namespace package: type stubs, or a broken install
        return False, "tensorrt imports but has no __version__ (type stubs or a broken install, not TensorRT)"
    if int(version.split(".")[0]) < 10:
        return False, f"TensorRT {version} is too old: the runner needs the TensorRT 10+ tensor API"
    try:
        cudart = runtime()
    except ImportError:
        return False, "cuda-bindings is not installed (pip install 'medsam-edge[gpu-cu12]' or [gpu-cu13])"
    try:
        if not ok(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"):
            return False, "no CUDA device"
        gpu = current_gpu()
    except InputError as e:
        bindings = cudart.cudaRuntimeGetVersion()
        driver = cudart.cudaDriverGetVersion()
        why = driver_mismatch(bindings[1] or 0, driver[1] or 0) if bindings[0] == driver[0] == 0 else None
        return False, f"no usable CUDA device ({why or e})"
    return True, f"TensorRT {version} on {gpu.name} ({gpu.sm})"


def engine_status(md: ModelDir, precision: str) -> em.EngineStatus:
    """find_engines for this machine's GPU and TensorRT version."""
    import tensorrt as trt

    return em.find_engines(md, current_gpu(), trt.__version__, precision)
