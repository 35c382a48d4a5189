"""CUDA through cuda-python, kept to what the TensorRT runner needs: the runtime module,
one-line errors, the GPU's identity, device buffers with pinned host mirrors, and why a
set of bindings cannot talk to this driver. Imported lazily by the TensorRT layer only.
"""

from __future__ import annotations

import ctypes

import numpy as np

from medsam_edge.engines import engine_manifest as em
from medsam_edge.errors import InputError


def runtime():
    """cuda-python's runtime module (cudart)."""
    try:
        from cuda.bindings import runtime as rt  # cuda-bindings 12.6+ and 13.x (13 dropped the old name)

        return rt
    except ImportError:
        from cuda import cudart  # older cuda-python 12.x

        return cudart


def ok(cudart, result, what: str):
    """Unpack a cuda-python (err, *values) tuple; an error becomes a one-line InputError."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        text = cudart.cudaGetErrorString(err)[1]
        raise InputError(f"CUDA {what} failed: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else (values or None)


def dims(d) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (-1 for a dynamic axis)."""
    return tuple(int(d[i]) for i in range(len(d)))


def current_gpu(device: int = 0) -> em.GpuIdentity:
    cudart = runtime()
    props = ok(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.split(b"\0")[0].decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return em.GpuIdentity(name.strip(), int(props.major), int(props.minor))


def _cuda_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_mismatch(runtime_version: int, driver_version: int) -> str | None:
    """Why these CUDA bindings cannot run on this driver (versions as CUDA reports them,
    e.g. 13050 and 12080), or None. A driver serves its own CUDA major and older ones only:
    cuda-bindings 13.x on a CUDA 12 driver fails every call with cudaErrorInsufficientDriver."""
    if driver_version == 0:
        return "no NVIDIA driver answers (no GPU, or the driver is not loaded)"
    if runtime_version // 1000 > driver_version // 1000:
        major = runtime_version // 1000
        return (f"the CUDA bindings here are CUDA {_cuda_text(runtime_version)} but the driver serves CUDA "
                f"{_cuda_text(driver_version)}: install bindings of the driver's major "
                f"(pip install 'medsam-edge[gpu-cu{driver_version // 1000}]'), or a CUDA {major} driver")
    return None


class Buffer:
    """One device buffer, with a pinned host mirror for tensors that cross to the host."""

    def __init__(self, cudart, shape: tuple, dtype: np.dtype, host: bool) -> None:
        self.cudart, self.dtype = cudart, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.device, self._host_ptr = 0, 0
        self.host: np.ndarray | None = None
        self.device = int(ok(cudart, cudart.cudaMalloc(self.nbytes), f"cudaMalloc of {self.nbytes} bytes"))
        if host:
            self._host_ptr = int(ok(cudart, cudart.cudaMallocHost(self.nbytes), "cudaMallocHost"))
            raw = (ctypes.c_byte * self.nbytes).from_address(self._host_ptr)
            self.host = np.frombuffer(memoryview(raw), self.dtype).reshape(shape)

    @property
    def mirror(self) -> np.ndarray:
        assert self.host is not None, "a device-only buffer has no host mirror"
        return self.host

    def free(self) -> None:
        if self.device:
            self.cudart.cudaFree(self.device)
        if self._host_ptr:
            self.host = None
            self.cudart.cudaFreeHost(self._host_ptr)
        self.device = self._host_ptr = 0
