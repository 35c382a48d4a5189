"""medsam_edge.runtime: frames in, masks out, without torch.

    from medsam_edge.runtime import Predictor, Prompt
    p = Predictor("models/lite_medsam")

The names below load lazily, so importing a runtime submodule does not load onnxruntime.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "Predictor": "predictor",
    "Session": "session",
    "RealtimeSession": "realtime",
    "Stream": "stream",
    "FrameResult": "result",
    "Frame": "frame",
    "Prompt": "prompts",
    "PromptSchedule": "schedule",
    "PromptTracker": "tracker",
    "ReusePolicy": "reuse",
    "open_source": "sources",
    "Source": "sources",
    "ArraySource": "sources",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'medsam_edge.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medsam_edge.runtime.{_NAMES[name]}"), name)


def __dir__() -> list[str]:
    return __all__
