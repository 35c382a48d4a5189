"""A real browser and a real viewer server, for the viewer's tests and benchmark.

Chromium (Debian's `chromium`) is driven over the DevTools protocol directly: a socket
per tab (the `websockets` client the viewer extra brings), mouse events through
Input.dispatchMouseEvent (trusted events, as a hand makes them), screenshots through
Page.captureScreenshot. No Selenium, no driver download. The server is the real
command, `medsam-edge view ... --port 0`, in a process of its own.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
         "--disable-backgrounding-occluded-windows", "--mute-audio", "--hide-scrollbars")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Tab:
    """One page over its DevTools socket: call(), evaluate(), mouse, screenshots."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30).__enter__()  # websockets 17 warns unless entered
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        n = next(self._ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def errors(self) -> list[str]:
        """JavaScript exceptions the page threw so far."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description", "?")
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def viewport(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str, timeout: float = 60.0):
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, every: float = 0.05):
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g} s for {expression}")
            time.sleep(every)

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0, modifiers: int = 0) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" or buttons
                  else "none", buttons=buttons, clickCount=1 if kind != "mouseMoved" else 0, modifiers=modifiers)

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 8) -> None:
        self.mouse("mouseMoved", x0, y0)
        self.mouse("mousePressed", x0, y0, buttons=1)
        for k in range(1, steps + 1):
            self.mouse("mouseMoved", x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps, buttons=1)
        self.mouse("mouseReleased", x1, y1)

    def click(self, x: float, y: float, shift: bool = False) -> None:
        modifiers = 8 if shift else 0
        self.mouse("mouseMoved", x, y, modifiers=modifiers)
        self.mouse("mousePressed", x, y, buttons=1, modifiers=modifiers)
        self.mouse("mouseReleased", x, y, modifiers=modifiers)

    def screenshot(self) -> np.ndarray:
        """The page as HxWx3 uint8 RGB."""
        import cv2

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.ws.close()


class Browser:
    """Headless Chromium with a fresh profile; tab() opens a page."""

    def __init__(self, binary: str | None = None, width: int = 1100, height: int = 700) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="medsam-view-chromium-")
        self.size = (width, height)
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        self.tabs: list[Tab] = []

    def tab(self, url: str = "about:blank") -> Tab:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?{url}", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as r:
            target = json.load(r)
        tab = Tab(target["webSocketDebuggerUrl"])
        tab.viewport(*self.size)
        self.tabs.append(tab)
        return tab

    def close(self) -> None:
        for t in self.tabs:
            try:
                t.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ViewServer:
    """`medsam-edge view MODEL SOURCE --port 0 ARGS...` in its own process; url once it listens."""

    def __init__(self, model_dir, source, *args: str, python: str = sys.executable, cwd=None,
                 env: dict | None = None, timeout: float = 180.0) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="medsam-view-", suffix=".log", delete=False)
        cmd = [python, "-m", "medsam_edge.cli", "view", str(model_dir), str(source), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=cwd,
                                     env={**os.environ, **(env or {})})
        self.url = self._read_url(timeout)
        base = self.url.split("?")[0].rstrip("/")
        self.base, self.token = base, (self.url.split("token=")[1] if "token=" in self.url else None)
        self.port = int(base.rsplit(":", 1)[1])

    def _read_url(self, timeout: float) -> str:
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                if "http://" in line:
                    found.append(line.split("open ", 1)[1].split()[0])
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"medsam-edge view did not start:\n{self.stderr()}")
        return found[0]

    def stderr(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def get(self, path: str, token: str | None = "default") -> tuple[int, bytes]:
        token = self.token if token == "default" else token
        sep = "&" if "?" in path else "?"
        url = self.base + path + (f"{sep}token={token}" if token else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def state(self, masks: bool = False) -> dict:
        status, body = self.get("/api/state" + ("?masks=rle" if masks else ""))
        if status != 200:
            raise RuntimeError(f"/api/state: HTTP {status}")
        return json.loads(body)

    def wait_state(self, check, timeout: float = 60.0, masks: bool = False) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.state(masks)
            if check(s):
                return s
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"state never matched; last: {json.dumps(s)[:600]}\n{self.stderr()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ViewServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        os.unlink(self.log.name)
