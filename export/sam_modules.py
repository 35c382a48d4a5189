"""Import segment-anything's model modules without its package __init__.

`segment_anything/__init__.py` imports its predictor and automatic mask generator, which
need torchvision; torchvision does not import beside the CPU torch build here, and we
use neither. Its `modeling` subpackage needs only torch. So we register a bare parent
package pointing at the installed files and import `segment_anything.modeling` under it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def sam_modeling() -> types.ModuleType:
    """Return the official `segment_anything.modeling` module."""
    parent = sys.modules.get("segment_anything")
    if parent is None:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or not spec.submodule_search_locations:
            from medsam_edge.errors import InputError

            raise InputError(
                "segment-anything is not installed; install the export extra: pip install 'medsam-edge[export]'"
            )
        parent = types.ModuleType("segment_anything")
        parent.__path__ = list(spec.submodule_search_locations)
        parent.__spec__ = spec
        sys.modules["segment_anything"] = parent
    return importlib.import_module("segment_anything.modeling")
