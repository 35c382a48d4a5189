"""The viewer as a user installs it: the built wheel (not this tree) in a fresh virtual
environment carries the page, and its server serves it to a browser."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

# Builds a wheel and installs it into a fresh venv: not in `make test-fast` (docs/testing.md).
pytestmark = pytest.mark.integration

pytest.importorskip("starlette", reason="the viewer extra is not installed (pip install 'medsam-edge[viewer]')")
from medsam_edge.bench import viewer_browser as vb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = (".venv", ".git", "build", "*.egg-info", "models", "out", "__pycache__", ".pytest_cache", ".typecheck",
            ".whl", "recordings")


def test_the_built_wheel_serves_its_own_page(tmp_path, tiny_model_dir):
    # Built from a copy: building in place would leave build/ in the tree.
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*LEFT_OUT))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(tree)], check=True, capture_output=True)
    (wheel,) = dist.glob("medsam_edge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for page in ("index.html", "viewer.js", "viewer.css"):
        assert f"medsam_edge/viewer/static/{page}" in names

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    # Its dependencies come from this environment's site-packages, after its own: a plain
    # path line in a .pth file (the editable install's hook there is not run from it).
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([str(python), "-c", "import medsam_edge.viewer as v; print(v.__file__)"], cwd=tmp_path,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(env)), where

    with vb.ViewServer(tiny_model_dir.path, "pydicom:examples_ybr_color.dcm", python=str(python), cwd=tmp_path) as srv:
        status, body = srv.get("/")
        assert status == 200 and b"medsam-edge view" in body
        assert srv.get("/viewer.js")[1] == (ROOT / "viewer" / "static" / "viewer.js").read_bytes()
        if vb.find_chromium() is None:
            pytest.skip("chromium is not installed: the wheel's files were served, not shown in a browser")
        with vb.Browser() as browser:
            tab = browser.tab(srv.url)
            tab.wait_for("window.medsamView && medsamView.stats.drawn > 0", timeout=120)
            assert tab.errors() == []
