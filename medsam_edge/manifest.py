"""The model directory and its manifest.json: the one record of what was exported.

Export writes it; calibration and the engine builder add to it; the runtime reads the
preprocessing and file names from it and never guesses. Opening one checks that the
directory is what its manifest says: the model id is known and its preprocessing and
input size are that model's, the recorded tensors are the contract's, and the ONNX files'
SHA-256s are the ones recorded at export (a swapped, replaced or damaged file is refused
before a backend loads it). The backend checks the loaded files' own inputs and outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from medsam_edge.atomic import write_json
from medsam_edge.contract import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_OUTPUTS,
    PRECISIONS,
    Preprocess,
    encoder_inputs,
    model_spec,
)
from medsam_edge.errors import InputError

FORMAT = "medsam-edge/model-dir"
# 2: the decoder takes point prompts (point_coords, point_labels) instead of boxes.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"


# (path, size, mtime, inode) -> SHA-256: a process that opens one directory many times
# (calibration, benchmarks) hashes each file once.
_VERIFIED: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (checkpoints and encoders run to GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelDir:
    """A validated model directory."""

    path: Path
    manifest: dict

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_json(self.manifest["preprocess"])

    def onnx(self, part: str, precision: str = "fp32") -> Path:
        """The encoder/decoder file that runs `precision` here: the first of the contract's
        candidates that exists (a reduced-precision decoder is optional), else the first
        candidate, so a message can name the file that is missing."""
        try:
            names = PRECISIONS[precision].files[part]
        except KeyError:
            raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}") from None
        for name in names:
            if (self.path / name).is_file():
                return self.path / name
        return self.path / names[0]

    def save(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)


def load_model_dir(path: str | Path) -> ModelDir:
    """Open a model directory; a missing or foreign manifest is a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: model directory not found; create one with `medsam-edge export`")
    mf = path / MANIFEST
    if not mf.is_file():
        raise InputError(f"{path}: no {MANIFEST}; this is not a model directory written by `medsam-edge export`")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{mf}: unreadable manifest ({e}); export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
        raise InputError(f"{mf}: not a medsam-edge manifest (format {found!r}); export the model again")
    if manifest.get("format_version") == 1:
        raise InputError(
            f"{mf}: exported by an earlier medsam-edge whose decoder takes boxes only; export the model "
            "again (medsam-edge export ... --overwrite) for the decoder with point prompts"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{mf}: manifest format version {manifest.get('format_version')!r}, this medsam-edge reads "
            f"{FORMAT_VERSION}; export the model again with this version"
        )
    md = ModelDir(path, manifest)
    _check_consistent(md, mf)
    for part in ("encoder", "decoder"):
        f = md.onnx(part)
        if not f.is_file():
            raise InputError(f"{f}: missing from the model directory; export the model again")
        _check_hash(f, md.manifest.get(part), mf)
    return md


def _check_consistent(md: ModelDir, mf: Path) -> None:
    """The manifest against the contract: known model, its preprocessing, its tensors."""
    again = "export the model again"
    try:
        spec = model_spec(str(md.manifest.get("model_id")))
        pre = md.preprocess
    except InputError as e:
        raise InputError(f"{mf}: {e}; {again}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{mf}: preprocessing record unreadable ({type(e).__name__}: {e}); {again}") from None
    if pre != spec.preprocess:
        raise InputError(f"{mf}: the preprocessing recorded is not {md.model_id}'s (size {pre.size}, {pre.resize}, "
                         f"{pre.normalize} where {md.model_id} has size {spec.preprocess.size}, "
                         f"{spec.preprocess.resize}, {spec.preprocess.normalize}): the manifest was edited or "
                         f"belongs to another model; {again}")
    if md.manifest.get("input_size", pre.size) != pre.size:
        raise InputError(f"{mf}: input_size {md.manifest.get('input_size')!r} differs from the preprocessing's "
                         f"size {pre.size}; {again}")
    for part, inputs, outputs in (("encoder", encoder_inputs(pre.size), ENCODER_OUTPUTS),
                                  ("decoder", DECODER_INPUTS, DECODER_OUTPUTS)):
        record = md.manifest.get(part)
        if not isinstance(record, dict):
            raise InputError(f"{mf}: no {part} record; {again}")
        for key, want in (("inputs", inputs), ("outputs", outputs)):
            if key in record and record[key] != [t.to_json() for t in want]:
                raise InputError(f"{mf}: the {part} {key} recorded are not the contract's "
                                 f"({', '.join(t.name for t in want)} with their shapes); {again}")


def _check_hash(onnx: Path, record, mf: Path) -> None:
    recorded = record.get("sha256") if isinstance(record, dict) else None
    if not recorded:
        raise InputError(f"{mf}: no SHA-256 recorded for {onnx.name}; export the model again")
    st = onnx.stat()
    key = (str(onnx.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    actual = _VERIFIED.get(key) or sha256_file(onnx)
    if actual != recorded:
        raise InputError(f"{onnx}: its SHA-256 is not the one the manifest recorded at export: the file was "
                         "replaced, swapped with another or damaged; export the model again")
    _VERIFIED[key] = actual
