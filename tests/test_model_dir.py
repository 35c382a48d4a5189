"""A model directory is what its manifest says, or it is refused in one line before any
backend runs: hashes, the model id's preprocessing, the recorded tensors, and the loaded
files' own inputs and outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medsam_edge.errors import InputError
from medsam_edge.manifest import load_model_dir

from robust_helpers import ECHO, ECHO_BOX, cli, one_line_error


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir.path, out)
    return out


def _edit(model: Path, change) -> None:
    path = model / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _swap_files(model: Path) -> None:
    (model / "encoder.onnx").rename(model / "tmp.onnx")
    (model / "decoder.onnx").rename(model / "encoder.onnx")
    (model / "tmp.onnx").rename(model / "decoder.onnx")


def test_the_exported_directory_opens(model_copy):
    assert load_model_dir(model_copy).model_id == "medsam_vit_tiny"


def test_swapped_or_replaced_files_are_refused_by_their_hash(model_copy):
    _swap_files(model_copy)
    with pytest.raises(InputError, match="encoder.onnx: its SHA-256 is not the one the manifest recorded"):
        load_model_dir(model_copy)


def test_an_edited_hash_is_refused(model_copy):
    _edit(model_copy, lambda m: m["decoder"].update(sha256="0" * 64))
    with pytest.raises(InputError, match="decoder.onnx: its SHA-256"):
        load_model_dir(model_copy)


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.update(model_id="lite_medsam"), "the preprocessing recorded is not lite_medsam's"),
    (lambda m: m.update(model_id="medsam_vit_huge"), "unknown model id 'medsam_vit_huge'"),
    (lambda m: m["preprocess"].update(size=512), "the preprocessing recorded is not medsam_vit_tiny's"),
    (lambda m: m.update(input_size=512), "input_size 512 differs"),
    (lambda m: m["preprocess"].pop("resize"), "preprocessing record unreadable"),
    (lambda m: m["encoder"]["outputs"][0].update(name="features"), "the encoder outputs recorded are not"),
    (lambda m: m["decoder"]["inputs"][1].update(shape=[1, 2, 2]), "the decoder inputs recorded are not"),
], ids=["model-id", "unknown-id", "size", "input-size", "no-resize", "output-name", "input-shape"])
def test_an_edited_manifest_is_refused(model_copy, change, expected):
    _edit(model_copy, change)
    with pytest.raises(InputError, match=expected) as e:
        load_model_dir(model_copy)
    assert "\n" not in str(e.value)


def test_files_swapped_along_with_their_hashes_fail_the_contract_when_loaded(model_copy):
    from medsam_edge.engines.select import open_backend

    from medsam_edge.manifest import sha256_file

    _swap_files(model_copy)
    _edit(model_copy, lambda m: [m[part].update(sha256=sha256_file(model_copy / f"{part}.onnx"))
                                 for part in ("encoder", "decoder")])
    md = load_model_dir(model_copy)  # consistent with itself now: the files must say it
    with pytest.raises(InputError, match=r"encoder.onnx: does not match the encoder contract \(input 'image' missing"):
        open_backend(md, "onnxruntime-cpu")


def test_an_encoder_of_another_size_than_the_manifest_says_is_refused(tiny_model_dir):
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend

    with pytest.raises(InputError, match=r"input 'image' is \[1, 3, 1024, 1024\], expected \[1, 3, 512, 512\]"):
        OnnxruntimeBackend(tiny_model_dir.onnx("encoder"), None, input_size=512)


def test_the_command_refuses_a_swapped_directory_in_one_line(model_copy, tmp_path):
    _swap_files(model_copy)
    r = cli("run", str(model_copy), ECHO, "--box", ECHO_BOX, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    one_line_error(r, "SHA-256 is not the one the manifest recorded")
