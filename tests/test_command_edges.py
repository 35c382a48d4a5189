"""Every command held to `run`'s rule (issue 25): outputs checked before any work, names
that become paths validated, numbers finite, prompts checked before anything is opened,
the Python API refusing what it cannot do. Through the real CLI and API; the families
marked fuzz (every command's --out, traversal names, non-finite numbers) are also part
of the fuzz suite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.atomic import json_text, write_json
from medsam_edge.errors import InputError

from robust_helpers import ECHO, ECHO_BOX, cli, one_line_error


def _bad_outs(tmp_path: Path) -> dict[str, str]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"a file": str(a_file), "under a file": str(a_file / "sub"), "/proc": "/proc/medsam-edge-test",
            "/sys": "/sys/kernel/medsam-edge-test"}


def _commands(model: str, out: str) -> dict[str, list[str]]:
    return {
        "run": ["run", model, ECHO, "--box", ECHO_BOX, "--out", out],
        "triton": ["triton", model, "--out", out],
        "bench": ["bench", model, "--out", out],
        "export": ["export", "--model", "medsam_vit_tiny", "--random-init", "--out", out],
        "calibrate": ["calibrate", model, "--frames", ECHO, "--cache-dir", out],
        "view": ["view", model, ECHO, "--port", "0", "--record-dir", out],
    }


@pytest.mark.fuzz
@pytest.mark.parametrize("command", ["run", "triton", "bench", "export", "calibrate", "view"])
def test_every_command_refuses_an_unusable_out_before_working(command, tiny_model_dir, tmp_path):
    for label, out in _bad_outs(tmp_path).items():
        r = cli(*_commands(str(tiny_model_dir.path), out)[command], timeout=120)
        assert r.returncode == 2, (command, label, r.stderr)
        last = one_line_error(r)
        assert out in last or "/proc" in last or "/sys" in last, (command, label, last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written anywhere


@pytest.mark.fuzz
@pytest.mark.parametrize("name", ["../../evil", "..", ".", "a/b", "/abs", "", "-x", "a\0b", "a" * 200, "ok/../.."])
def test_triton_names_that_would_leave_the_repository_are_refused(name, tiny_model_dir, tmp_path):
    if "\0" in name:  # argv cannot carry a NUL: the API is where it could come from
        from medsam_edge.serving.repository import write_repository

        with pytest.raises(InputError, match="--name"):
            write_repository(tiny_model_dir, tmp_path / "repo", name=name)
        return
    r = cli("triton", str(tiny_model_dir.path), "--out", str(tmp_path / "repo"), f"--name={name}")
    assert r.returncode == 2
    one_line_error(r, "--name")
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "evil").exists()


def test_triton_with_a_good_name_writes_inside_out(tiny_model_dir, tmp_path):
    r = cli("triton", str(tiny_model_dir.path), "--out", str(tmp_path / "repo"), "--name", "medsam_2.b-c")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "repo" / "medsam_2.b-c" / "config.pbtxt").is_file()


@pytest.mark.fuzz
@pytest.mark.parametrize("argv, expected", [
    (["--box", "1e308,0,10,10"], "1e+308 is not a pixel coordinate"),
    (["--box", "inf,0,10,10"], "not a finite number"),
    (["--point", "nan,3"], "not a finite number"),
    (["--point", "-1e400,3"], "not a finite number"),
    (["--read-timeout", "nan"], "--read-timeout nan"),
    (["--read-timeout", "-1"], "--read-timeout -1"),
    (["--backend", "triton://127.0.0.1:70001"], "port 70001 is not a TCP port"),
])
def test_non_finite_and_wrapped_numbers_are_refused_as_typed(argv, expected, tiny_model_dir, tmp_path):
    box = [] if argv[0] in ("--box", "--point") else ["--box", ECHO_BOX]
    r = cli("run", str(tiny_model_dir.path), ECHO, *box, *argv, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    one_line_error(r, expected)


def test_a_box_with_a_leading_minus_is_a_box(tiny_model_dir, tmp_path):
    r = cli("run", str(tiny_model_dir.path), ECHO, "--box", "-50,-50,100,100", "--max-frames", "1", "--no-video",
            "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["complete"] is True


def test_a_bad_constant_box_is_refused_before_outputs_so_the_fixed_rerun_needs_no_overwrite(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    r = cli("run", str(tiny_model_dir.path), ECHO, "--box", "5000,5000,6000,6000", "--out", str(out))
    assert r.returncode == 2
    one_line_error(r, "outside the 320x240 image")
    assert not (out / "summary.json").exists()
    r = cli("run", str(tiny_model_dir.path), ECHO, "--box", ECHO_BOX, "--max-frames", "1", "--no-video",
            "--out", str(out))
    assert r.returncode == 0, r.stderr


def test_prompts_file_errors_name_the_entry_or_line_not_python(tiny_model_dir, tmp_path):
    cases = {"p.json": ("[1, 2]", 'entry 0: expected {"frame": N, "prompts": [...]}, got a number'),
             "q.json": ('{"0": 5}', "frame 0: expected a box, a prompt object or a list of them, got a number"),
             "r.csv": ("frame,x0,y0,x1,y1\n0,1,2,30,40\n1,a,2,3,4\n", "line 3: 'a' is not a number"),
             "s.csv": ("frame,x0,y0\n0,1,2\n", "line 1: the header lacks x1, y1")}
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        r = cli("run", str(tiny_model_dir.path), ECHO, "--prompts", str(tmp_path / name), "--out", str(tmp_path / "o"))
        assert r.returncode == 2
        last = one_line_error(r, expected)
        assert "indices" not in last and "could not convert" not in last


def test_calibrate_cache_dir_that_is_a_file_fails_before_sampling(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("x")
    r = cli("calibrate", str(tiny_model_dir.path), "--frames", ECHO, "--cache-dir", str(cache), timeout=60)
    assert r.returncode == 2
    one_line_error(r, f"--cache-dir {cache}: is a file")


def test_the_predictor_refuses_what_it_cannot_do(tiny_model_dir, echo_frames):
    from medsam_edge.runtime import Predictor

    for threads in (-1, 0, 1.5, True):
        with pytest.raises(InputError, match=r"^threads="):
            Predictor(tiny_model_dir, "onnxruntime-cpu", threads=threads)
    p = Predictor(tiny_model_dir, "onnxruntime-cpu", threads=1)
    session = p.session(prompts=[[10, 10, 50, 50]])
    with pytest.raises(InputError, match="not finite"):
        session.set_prompts([[float("nan"), 10, 50, 50]])
    p.close()
    for call in (lambda: p.set_image(echo_frames[0]), lambda: p.predict(boxes=[[1, 1, 9, 9]]), lambda: p.session()):
        with pytest.raises(InputError, match="this Predictor is closed"):
            call()


@pytest.mark.fuzz
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_json_is_never_written_with_a_non_finite_number(value, tmp_path):
    obj = {"frames": 3, "measurements": [{"area_mm2": float(value)}]}
    with pytest.raises(ValueError, match=r"\['measurements'\]\[0\]\['area_mm2'\]"):
        json_text(obj)
    with pytest.raises(ValueError):
        write_json(tmp_path / "s.json", obj)
    assert list(tmp_path.iterdir()) == []  # nothing half-written under the name
