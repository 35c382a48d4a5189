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
        # Which arithmetic the CPU has (AVX2 only, AVX-512 BF16/VNNI, AMX) decides the fastest precision.
        "cpu_flags": cpu_flags(),
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


# The instruction sets that decide which precisions and kernels run fast.
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                  "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The CPU's flags among RELEVANT_FLAGS, as /proc/cpuinfo lists them (empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in RELEVANT_FLAGS if f in have]
    except OSError:
        pass
    return []


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


def end_of_run(clock: dict | None) -> dict:
    """What a report records of the load when its run ends; `clock` is cpu_clock() at its start."""
    return {"load_average_end": [round(x, 2) for x in os.getloadavg()], "cpu_used_by_others": others_share(clock)}


# The load average cannot tell this run's own threads (a real-time stream keeps three busy on
# two cores) from another job's. CPU time can: the machine's busy time (/proc/stat) less this
# process's own (children count once waited for) is what everything else took.
def cpu_clock() -> dict | None:
    """The machine's busy and total CPU seconds since boot and this process's own; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + ticks[4]
    t = os.times()
    return {"busy_s": (sum(ticks) - idle) / hz, "total_s": sum(ticks) / hz,
            "own_s": t.user + t.system + t.children_user + t.children_system}


def others_share(start: dict | None, end: dict | None = None) -> float | None:
    """Share of all the machine's CPU time between two cpu_clock() readings that other processes used."""
    end = end if end is not None else cpu_clock()
    if not start or not end or end["total_s"] <= start["total_s"]:
        return None
    others = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return round(min(1.0, max(0.0, others / (end["total_s"] - start["total_s"]))), 3)
