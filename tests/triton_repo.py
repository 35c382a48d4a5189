"""The python-platform Triton repository the tests' server runs, written by the command line."""

from __future__ import annotations

from pathlib import Path

from medsam_edge.cli import main

# Streams the server keeps at once: the eviction test opens one more than this.
MAX_STREAMS = 3


def write_python_repo(model_dir, out: Path) -> Path:
    """`medsam-edge triton MODEL_DIR --out OUT` with one thread, MAX_STREAMS streams, 2 slots."""
    rc = main(["triton", str(model_dir.path), "--out", str(out), "--threads", "1",
               "--max-streams", str(MAX_STREAMS), "--slots", "2"])
    assert rc == 0
    return out
