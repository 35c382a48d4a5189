"""What a benchmark ran on: CPU, cores, memory, load, GPU, and every relevant version."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def describe() -> dict:
    from medsam_edge.info import collect

    out = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        # Another job on a 2-core machine changes every figure: the load says if one ran.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "env": collect(),
    }
    out["gpu"] = _gpu()
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
