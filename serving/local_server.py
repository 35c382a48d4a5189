"""Run the tritonserver that the nvidia-pytriton wheel bundles, on 127.0.0.1 only.

For CPU servers, the tests and the bench: that build has Triton's Python backend (the
`--platform python` repository) and no onnxruntime or TensorRT backend; GPU servers run
NVIDIA's Triton container instead. The Python stub finds medsam_edge because the bin
directory of this process's Python environment is put first on the server's PATH (the
stub's interpreter takes its prefix from the python3 it finds there), which is also how
nvidia-pytriton itself starts the server.

    python -m medsam_edge.serving.local_server REPO [--grpc-port 8001] [--http-port 8000]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from medsam_edge.errors import InputError

LOOPBACK = "127.0.0.1"


def wheel_dir() -> Path:
    """site-packages' pytriton/tritonserver, or an InputError saying what to install."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("nvidia-pytriton is not installed; pip install 'medsam-edge[triton]' for the bundled tritonserver")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise InputError(f"{root}: no bin/tritonserver in this nvidia-pytriton install")
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    repository: Path
    grpc_port: int
    http_port: int
    process: subprocess.Popen
    log_path: Path
    workdir: Path = field(repr=False)

    @property
    def url(self) -> str:
        """host:port of the gRPC endpoint (what triton://URL names)."""
        return f"{LOOPBACK}:{self.grpc_port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as a crashed server would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(repository: str | os.PathLike, grpc_port: int | None = None, http_port: int | None = None,
          log_path: str | os.PathLike | None = None, ready_timeout: float = 90.0) -> LocalServer:
    """Start tritonserver on REPO, bound to 127.0.0.1; wait (bounded) until every model is ready."""
    root = wheel_dir()
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise InputError(f"{repository}: model repository not found; write one with `medsam-edge triton`")
    work = Path(tempfile.mkdtemp(prefix="medsam-triton-"))
    backends = work / "backends"
    shutil.copytree(root / "backends", backends)
    stub = root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
    if not stub.is_file():
        shutil.rmtree(work, ignore_errors=True)
        raise InputError(f"{stub}: nvidia-pytriton has no Python stub for Python {sys.version_info[0]}."
                         f"{sys.version_info[1]}")
    shutil.copy2(stub, backends / "python" / stub.name)
    grpc_port, http_port = grpc_port or free_port(), http_port or free_port()
    log_path = Path(log_path) if log_path else work / "tritonserver.log"
    env = dict(os.environ)
    libs = root.parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    # Not resolved: a venv's bin/python3 is a symlink, and the venv is what the stub must find.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={repository}",
           f"--backend-directory={backends}", f"--grpc-address={LOOPBACK}", f"--grpc-port={grpc_port}",
           f"--http-address={LOOPBACK}", f"--http-port={http_port}", "--allow-metrics=false",
           "--pinned-memory-pool-byte-size=0", "--exit-timeout-secs=5"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = LocalServer(repository, grpc_port, http_port, proc, log_path, work)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = server.log_tail()
            server.stop()
            failed = [ln for ln in tail.splitlines() if "failed to load" in ln or "error:" in ln]
            raise InputError(f"tritonserver on {repository} exited ({proc.returncode}): "
                             f"{(failed or tail.splitlines() or ['no log'])[-1].strip()[:300]} (log {log_path})")
        if server.ready():
            return server
        time.sleep(0.2)
    server.stop()
    raise InputError(f"tritonserver on {repository} not ready after {ready_timeout:.0f} s (log {log_path})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medsam_edge.serving.local_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repository", type=Path)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--log", type=Path, help="server log file (default: in a temporary directory)")
    args = ap.parse_args(argv)
    try:
        server = start(args.repository, args.grpc_port, args.http_port, args.log)
    except InputError as e:
        print(f"local_server: error: {e}", file=sys.stderr)
        return 2
    print(f"tritonserver ready: --backend triton://{server.url} (log {server.log_path}); Ctrl-C stops it", flush=True)

    def _stop(signum, frame):
        raise KeyboardInterrupt

    # The server runs in its own session (a Ctrl-C meant for a client must not kill it), so this
    # process stops it on SIGINT and SIGTERM alike; a background job may have SIGINT ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
