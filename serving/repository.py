"""Write a Triton model repository from a model directory (atomically, as a whole).

Layout for a stream model named NAME (default "medsam"), version V (default 1):
    REPO/NAME/config.pbtxt            the stream model (Python backend, per-stream cache)
    REPO/NAME/V/model.py              imports medsam_edge.serving.stream_model
    REPO/NAME/V/model_manifest.json   the model directory's manifest, as exported
    REPO/NAME/V/encoder.onnx ...      python platform only: the ONNX it runs in-process
    REPO/NAME_encoder/, NAME_decoder/ onnxruntime / tensorrt platforms: config.pbtxt and
                                      V/model.onnx or V/model.plan, called by the stream model
    REPO/medsam_edge_repository.json  what was written from what: SHA-256 of every file
Source files are checked against the checksums their manifests record before they are
copied, and the Python models check theirs again when Triton loads them.
"""

from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path

from medsam_edge import __version__
from medsam_edge.atomic import atomic_dir, check_output, write_json, write_text
from medsam_edge.contract import PRECISIONS
from medsam_edge.errors import InputError
from medsam_edge.engines import triton_protocol as P
from medsam_edge.manifest import MANIFEST, ModelDir, sha256_file
from medsam_edge.serving import config as C

RECORD = "medsam_edge_repository.json"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RECORD_FORMAT = "medsam-edge/triton-repository"

_STREAM_MODEL_PY = '''"""Triton Python-backend entry of medsam-edge's stream model (written by `medsam-edge triton`).

Triton's Python stub must import medsam_edge: start tritonserver with the bin directory of the
Python environment that has medsam-edge installed first on PATH (the stub's interpreter takes its
prefix, hence its site-packages, from the python3 it finds there), or pip install medsam-edge
into the Python that the server's stub uses.
"""

try:
    from medsam_edge.serving.stream_model import TritonPythonModel  # noqa: F401
except ImportError as e:
    raise ImportError(
        f"medsam-edge does not import in Triton's Python stub ({e}); put the bin directory of the "
        "environment where it is installed first on tritonserver's PATH"
    ) from e
'''


def _checked_copy(src: Path, dest: Path, expected: str | None) -> str:
    """Copy src to dest; refuse a source whose SHA-256 differs from its manifest's."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    digest = sha256_file(dest)
    if expected and digest != expected:
        raise InputError(f"{src}: SHA-256 differs from the one its manifest records (changed or corrupt); "
                         "export or build it again")
    return digest


def _onnx(md: ModelDir, part: str, precision: str) -> tuple[Path, str | None]:
    """The precision's file for part and the checksum recorded for it (export records FP32's)."""
    path = md.onnx(part, precision)
    if not path.is_file():
        raise InputError(f"{path}: no {precision} {part} in {md.path}; run `medsam-edge calibrate` "
                         "or choose --precision fp32")
    entry = md.manifest.get(part, {})
    return path, entry.get("sha256") if entry.get("file") == path.name else None


def _plans(md: ModelDir, precision: str, engines: Path | None) -> dict[str, tuple[bytes, dict]]:
    """The TensorRT plans of one engine set: {part: (bytes, manifest entry)}, checksums checked."""
    from medsam_edge.engines import engine_manifest as em

    root = md.path / em.ENGINES_DIR
    if engines is None:
        sets = [d for d in sorted(root.iterdir()) if (em.load(d) or {}).get("engines", {}).get(precision)] \
            if root.is_dir() else []
        if len(sets) != 1:
            found = ", ".join(d.name for d in sets) or "none"
            raise InputError(f"{root}: --platform tensorrt needs exactly one {precision} engine set (found: {found}); "
                             "build one with `medsam-edge build` on the server's GPU, or name it with --engines")
        engines = sets[0]
    manifest = em.load(engines)
    entries = (manifest or {}).get("engines", {}).get(precision)
    if not entries:
        raise InputError(f"{engines}: no {precision} engines recorded; run `medsam-edge build {md.path}`")
    return {part: (em.read_plan(engines, entries[part]), {**entries[part], "tensorrt": manifest["tensorrt"],
                                                          "gpu": manifest["gpu"]}) for part in em.PARTS}


def write_repository(md: ModelDir, out: Path, platform: str = "python", precision: str = "fp32",
                     instances: int = 1, name: str = P.DEFAULT_NAME, version: int = 1,
                     max_streams: int = P.MAX_STREAMS, slots: int = P.SLOTS_PER_STREAM,
                     idle_s: float = P.STREAM_IDLE_S, threads: int | None = None,
                     engines: Path | None = None, overwrite: bool = False) -> Path:
    """Write the repository; -> out. One-line InputErrors for anything the user can fix."""
    if platform not in C.PLATFORMS:
        raise InputError(f"--platform {platform!r}: expected one of {', '.join(C.PLATFORMS)}")
    # The name becomes directories in the repository: nothing that climbs out of it or hides.
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"--name {name!r}: a model name is letters, digits, '_', '-' and '.', starting with a "
                         f"letter, digit or '_' (e.g. {P.DEFAULT_NAME})")
    check_output(out, "--out", overwrite=overwrite)
    engine = {"python": "onnxruntime", "onnxruntime": "triton", "tensorrt": "tensorrt"}[platform]
    if precision not in PRECISIONS or engine not in PRECISIONS[precision].runs_on:
        runs = [p for p, v in PRECISIONS.items() if engine in v.runs_on]
        raise InputError(f"--precision {precision!r} does not run on --platform {platform}; choose {', '.join(runs)}")
    for label, value in (("--instances", instances), ("--max-streams", max_streams), ("--slots", slots),
                         ("--version", version)):
        if int(value) < 1:
            raise InputError(f"{label} {value}: must be at least 1")
    size = int(md.preprocess.size)
    enc_name, dec_name = name + P.ENCODER_SUFFIX, name + P.DECODER_SUFFIX
    files: dict[str, str] = {}
    sources: dict[str, dict] = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        vdir = tmp / name / str(version)
        vdir.mkdir(parents=True)
        if platform == "python":
            for part in ("encoder", "decoder"):
                src, expected = _onnx(md, part, precision)
                files[f"{name}/{version}/{part}.onnx"] = _checked_copy(src, vdir / f"{part}.onnx", expected)
                sources[part] = {"file": src.name, "sha256": files[f"{name}/{version}/{part}.onnx"]}
        elif platform == "onnxruntime":
            for part, model in (("encoder", enc_name), ("decoder", dec_name)):
                src, expected = _onnx(md, part, precision)
                files[f"{model}/{version}/model.onnx"] = _checked_copy(src, tmp / model / str(version) / "model.onnx",
                                                                       expected)
                sources[part] = {"file": src.name, "sha256": files[f"{model}/{version}/model.onnx"]}
        else:
            for part, (data, entry) in _plans(md, precision, engines).items():
                model = enc_name if part == "encoder" else dec_name
                dest = tmp / model / str(version) / "model.plan"
                dest.parent.mkdir(parents=True)
                dest.write_bytes(data)
                files[f"{model}/{version}/model.plan"] = entry["plan_sha256"]
                sources[part] = {"file": entry["plan"], "sha256": entry["plan_sha256"], "onnx": entry["onnx"],
                                 "onnx_sha256": entry["onnx_sha256"], "tensorrt": entry["tensorrt"],
                                 "gpu": entry["gpu"]}
        if platform != "python":
            # The exported encoder has a fixed batch of 1: Triton can queue requests across
            # clients but not stack them, so the encoder scales by instances.
            write_text(tmp / enc_name / "config.pbtxt", C.encoder_config(enc_name, platform, size, instances, None))
            write_text(tmp / dec_name / "config.pbtxt", C.decoder_config(dec_name, platform, instances))
        shutil.copyfile(md.path / MANIFEST, vdir / "model_manifest.json")
        write_text(vdir / "model.py", _STREAM_MODEL_PY)
        params = {
            "model_id": md.model_id, "input_size": size, "precision": precision, "platform": platform,
            "max_streams": max_streams, "slots_per_stream": slots, "stream_idle_s": idle_s,
            "workers": P.WORKERS, "encoder_concurrency": instances, "threads": threads or 0,
            "encoder_model": enc_name if platform != "python" else "",
            "decoder_model": dec_name if platform != "python" else "",
            "encoder_sha256": sources["encoder"]["sha256"], "decoder_sha256": sources["decoder"]["sha256"],
            "medsam_edge_version": __version__,
        }
        write_text(tmp / name / "config.pbtxt", C.stream_config(name, size, params))
        for rel in (f"{name}/config.pbtxt", f"{name}/{version}/model.py", f"{name}/{version}/model_manifest.json",
                    *((f"{m}/config.pbtxt" for m in (enc_name, dec_name)) if platform != "python" else ())):
            files[rel] = sha256_file(tmp / rel)
        write_json(tmp / RECORD, {
            "format": RECORD_FORMAT, "format_version": 1, "model_id": md.model_id, "platform": platform,
            "precision": precision, "stream_model": name, "version": version,
            "source": {"model_dir": str(md.path.resolve()), "checkpoint": md.manifest.get("checkpoint"), **sources},
            "stream_cache": {"max_streams": max_streams, "slots_per_stream": slots, "idle_s": idle_s,
                             "max_bytes": P.server_memory_bytes(max_streams, slots)},
            "files": files, "medsam-edge": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
    return Path(out)
