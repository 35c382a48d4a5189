"""The runtime install (no extra) starts every command, and a command whose extra is
missing says which to install in one line (issue 25; issue 23 item 6).

The fast tests hide the extras' packages from a subprocess (None in sys.modules makes an
import fail as if the package were absent); the integration test installs the package
with no extra into a fresh venv and runs `--help`, `info` and `run` there."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from medsam_edge.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = tuple(m for modules in EXTRAS.values() for m in modules)
WITHOUT_EXTRAS = (
    "import sys\n"
    f"for m in {HIDDEN!r}:\n"
    "    sys.modules[m] = None\n"
    "from medsam_edge.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def without_extras(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *argv], capture_output=True, text=True, timeout=120)


def test_help_and_every_subcommand_help_start_without_extras():
    r = without_extras("--help")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    commands = [c for c in ("export", "run", "build", "calibrate", "triton", "plan", "info", "bench", "view")
                if f"\n    {c} " in r.stdout]
    assert len(commands) == 9, r.stdout
    for c in commands:
        sub = without_extras(c, "--help")
        assert sub.returncode == 0 and "Traceback" not in sub.stderr, (c, sub.stderr)


@pytest.mark.parametrize("argv, extra", [
    (["bench", "MODEL"], "bench"),
    (["export", "--model", "lite_medsam", "--out", "OUT"], "export"),
    (["calibrate", "MODEL", "--frames", "pydicom:examples_ybr_color.dcm"], "export"),
    (["view", "MODEL", "pydicom:examples_ybr_color.dcm"], "viewer"),
])
def test_a_command_without_its_extra_names_it_in_one_line(argv, extra, tiny_model_dir, tmp_path):
    argv = [str(tiny_model_dir.path) if a == "MODEL" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    r = without_extras(*argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"medsam-edge {argv[0]}: ") and f"pip install 'medsam-edge[{extra}]'" in last, last
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_info_and_run_work_without_extras(tiny_model_dir, tmp_path):
    r = without_extras("info", "--json")
    assert r.returncode == 0, r.stderr
    assert any(b["name"] == "onnxruntime-cpu" and b["available"] for b in json.loads(r.stdout)["backends"])
    r = without_extras("run", str(tiny_model_dir.path), "pydicom:examples_ybr_color.dcm", "--box", "160,60,210,125",
                       "--max-frames", "2", "--no-video", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["complete"] is True


@pytest.mark.integration
def test_the_runtime_install_alone_runs_help_info_and_run(tiny_model_dir, tmp_path):
    """`pip install medsam-edge` with no extra, in a fresh venv, with the model directory made
    by the test session's own (export) environment."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True,
                         timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"pip could not install the runtime's dependencies here: {pip.stderr.strip()[-300:]}")
    present = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in "
                              f"{HIDDEN!r} if u.find_spec(m)])"], capture_output=True, text=True)
    assert present.stdout.strip() == "[]", f"an extra's package came with the runtime: {present.stdout}"
    exe = env_dir / "bin" / "medsam-edge"
    for argv in (["--help"], ["info"]):
        r = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (argv, r.stderr)
    out = tmp_path / "out"
    r = subprocess.run([str(exe), "run", str(tiny_model_dir.path), "pydicom:examples_ybr_color.dcm", "--box",
                        "160,60,210,125", "--max-frames", "3", "--out", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["frames"] == 3 and (out / "overlay.mp4").is_file()
    r = subprocess.run([str(exe), "bench", str(tiny_model_dir.path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "medsam-edge bench: needs the bench extra (no module named 'psutil'): pip install 'medsam-edge[bench]'")
