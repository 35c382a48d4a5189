"""Compiled OpenVINO models kept in the model directory, so a second start skips compiling.

Layout: `<model_dir>/engines/openvino_cache/<part>.<precision>.blob` (the CPU plugin's
`export_model` bytes) beside `<part>.<precision>.json`, the key it was built under. The
key holds everything that makes a blob wrong to reuse: the ONNX file's size and SHA-256,
the OpenVINO version, the inference precision, and the CPU (its name and OpenVINO's
capability list, which decide the kernels and whether BF16 was inserted). Threads are not
in the key: `import_model` applies the caller's thread count (read back in the backend).
The sidecar also holds the blob's own size and SHA-256: a blob swapped or edited after it
was written (another part's, another machine's) is compiled again, never imported.

A blob whose key differs, or that OpenVINO cannot import, is compiled again and the log
names the reason; a cache folder that cannot be written is a warning, never a failure.
Blob and key are each written atomically, blob first, so a crash between them leaves a key
that does not match and the next start rebuilds.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from medsam_edge.atomic import write_bytes, write_json
from medsam_edge.errors import InputError, first_line
from medsam_edge.manifest import sha256_file

log = logging.getLogger(__name__)

KEY_FORMAT = "medsam-edge/openvino-cache"
KEY_VERSION = 2  # 2: the blob's own size and SHA-256 in the sidecar


@dataclass(frozen=True)
class Compiled:
    """One compiled part and how it came to be: "cached" (imported from the blob), "compiled"
    (built and written to the cache) or "uncached" (built, no cache folder usable)."""

    model: object
    state: str
    seconds: float
    reason: str = ""


# (path, size, mtime, inode) -> SHA-256: a part cut into segments keys each segment on the
# same file, and a process may open one model many times (calibration's trials).
_SHA: dict[tuple, str] = {}


def file_sha256(onnx: Path) -> str:
    st = onnx.stat()
    k = (str(onnx.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if k not in _SHA:
        _SHA[k] = sha256_file(onnx)
    return _SHA[k]


def cache_key(onnx: Path, inference_precision: str, ov_version: str, cpu: str, capabilities,
              segment: list | None = None) -> dict:
    """The facts a compiled blob depends on, as written to its JSON sidecar. segment: the
    [start, end] tensors of a cut part (engines/openvino_segments.py), None for a whole one."""
    return {
        "format": KEY_FORMAT,
        "format_version": KEY_VERSION,
        "onnx": onnx.name,
        "onnx_bytes": onnx.stat().st_size,
        "onnx_sha256": file_sha256(onnx),
        "openvino": ov_version,
        "inference_precision": inference_precision,
        "cpu": cpu,
        "cpu_capabilities": sorted(capabilities),
        "segment": segment,
    }


def stale_reason(stored: dict | None, key: dict) -> str:
    """Why a stored key does not fit `key` ("" when it does), in words for the log."""
    if stored is None:
        return "no compiled cache yet"
    if stored.get("format") != KEY_FORMAT or stored.get("format_version") != KEY_VERSION:
        return "cache written by another medsam-edge version"
    if stored.get("openvino") != key["openvino"]:
        return f"compiled by OpenVINO {stored.get('openvino')}, this is {key['openvino']}"
    if stored.get("onnx_bytes") != key["onnx_bytes"] or stored.get("onnx_sha256") != key["onnx_sha256"]:
        return f"{key['onnx']} changed since it was compiled"
    for field in ("onnx", "inference_precision", "cpu", "cpu_capabilities", "segment"):
        if stored.get(field) != key[field]:
            return f"{field.replace('_', ' ')} differs ({stored.get(field)} then, {key[field]} now)"
    return ""


def paths(cache_dir: Path, part: str, precision: str) -> tuple[Path, Path]:
    """(blob, key) files for one part and precision."""
    return cache_dir / f"{part}.{precision}.blob", cache_dir / f"{part}.{precision}.json"


def _read_key(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def compile_cached(core, onnx: Path, part: str, precision: str, config: dict, key: dict,
                   cache_dir: Path | None, build=None) -> Compiled:
    """Import the part from the cache when its key matches, else compile the ONNX for the CPU
    (and write the cache). OpenVINO's own errors become a one-line InputError naming the file.
    build: () -> the ov.Model to compile instead of the whole file (a segment of it)."""
    t0 = time.perf_counter()
    reason = "caching off"
    if cache_dir is not None:
        blob, key_file = paths(cache_dir, part, precision)
        reason = stale_reason(_read_key(key_file), key)
        if not reason and not blob.is_file():
            reason = f"{blob.name} is missing"
        data = b""
        if not reason:
            data = _read_blob(blob)
            stored = _read_key(key_file) or {}
            if data is None or len(data) != stored.get("blob_bytes") or _sha256(data) != stored.get("blob_sha256"):
                reason = f"{blob.name} is not the blob its key was written for (changed or replaced)"
        if not reason:
            try:
                model = core.import_model(io.BytesIO(data), "CPU", config)
                return Compiled(model, "cached", time.perf_counter() - t0)
            except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
                reason = f"{blob.name} does not import ({first_line(e)})"
        # A cache that was there but does not fit is a rebuild, and the log says so and why.
        verb = "compiling" if reason == "no compiled cache yet" else "rebuilding the compiled cache of"
        log.info("openvino: %s %s (%s): %s", verb, onnx.name, precision, reason)
    model = _compile(core, onnx, config, build)
    state = "uncached"
    if cache_dir is not None:
        try:
            exported = model.export_model()  # a BytesIO in recent releases, bytes in older ones
            data = exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)
            write_bytes(blob, data)
            write_json(key_file, {**key, "blob_bytes": len(data), "blob_sha256": _sha256(data)})
            state = "compiled"
        except OSError as e:
            log.warning("openvino: cannot write the compiled cache in %s (%s); the next start compiles again",
                        cache_dir, e)
    return Compiled(model, state, time.perf_counter() - t0, reason)


def _read_blob(blob: Path) -> bytes | None:
    try:
        return blob.read_bytes()
    except OSError:
        return None


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _compile(core, onnx: Path, config: dict, build=None):
    if not onnx.is_file():
        raise InputError(f"{onnx}: ONNX file not found")
    try:
        model = build() if build is not None else core.read_model(str(onnx))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{onnx}: OpenVINO cannot read it ({first_line(e)}); export the model again "
                         "or choose --backend onnxruntime-cpu") from None
    try:
        return core.compile_model(model, "CPU", config)
    except Exception as e:
        raise InputError(f"{onnx}: OpenVINO cannot compile it for the CPU ({first_line(e)}); "
                         "choose --backend onnxruntime-cpu") from None
