"""The viewer's web server: its own page, GET /api/state, and one socket per page.

Safe on a network: bound to 127.0.0.1 unless told otherwise; on any other address a
token (printed once, in the URL) is asked of the page, the API and the socket; on
127.0.0.1 the Host header must name the loopback (a DNS-rebinding page cannot reach the
server); a socket opened by a page of another origin is refused; nothing but the
page's three files is served. Several pages may watch; one controls the prompts.

A slow page gets fewer, newer frames: each page holds at most WINDOW frames it has not
yet drawn (it acks each), and while it is behind only the newest frame waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections import deque
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from medsam_edge.viewer import protocol, state
from medsam_edge.viewer.protocol import EDITS, Refused
from medsam_edge.viewer.publish import Packet

log = logging.getLogger("medsam_edge.view")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WINDOW = 2  # frames in flight to one page: one being drawn, one on the way
ACK_TIMEOUT_S = 2.0  # a page that stopped acking (a hidden tab) is sent a frame again after this
CONTROL_WAITING = 256  # text messages waiting for one page at most (refusals of a flood are cut here)
STATE_DELAY_S = 0.05  # state changes within this are sent as one
FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/viewer.js": ("viewer.js", "text/javascript"),
         "/viewer.css": ("viewer.css", "text/css")}


class Client:
    def __init__(self, number: int, ws: WebSocket) -> None:
        self.id, self.ws = number, ws
        self.limit = protocol.RateLimit()
        self.control: deque[str] = deque(maxlen=CONTROL_WAITING)
        self.latest: Packet | None = None
        self.drawn = -1  # the frame this page last said it drew
        self.inflight = 0
        self.sent_at = 0.0
        self.bytes_sent = 0
        self.wake = asyncio.Event()

    def say(self, message: dict) -> None:
        self.control.append(json.dumps(message, separators=(",", ":")))
        self.wake.set()

    async def send_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.control:
                await self.ws.send_text(self.control.popleft())
            if self.inflight and time.monotonic() - self.sent_at > ACK_TIMEOUT_S:
                self.inflight = 0
            if self.latest is not None and self.inflight < WINDOW:
                p, self.latest = self.latest, None
                # An edit's answer on the frozen frame this page shows: its masks, not the picture again.
                data = p.head if p.frozen and p.index == self.drawn else p.head + p.jpeg
                self.inflight += 1
                self.sent_at = time.monotonic()
                self.bytes_sent += len(data)
                await self.ws.send_bytes(data)
                self.wake.set()  # control messages may have come meanwhile


class Hub:
    def __init__(self, engine, token_required: bool = False) -> None:
        self.engine = engine
        self.token_required = token_required
        self.clients: dict[int, Client] = {}
        self.controller: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._next = 1
        self._last: Packet | None = None
        self._state_due = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.engine.emit = lambda packet: loop.call_soon_threadsafe(self.publish, packet)
        self.engine.changed = lambda: loop.call_soon_threadsafe(self.state_changed)

    def viewers(self) -> dict:
        return {"count": len(self.clients), "controller": self.controller}

    def state(self, masks: bool = False) -> dict:
        return state.build(self.engine, self.viewers(), masks)

    # -- to the pages ----------------------------------------------------------------------------
    def publish(self, data: Packet) -> None:
        self._last = data
        for c in self.clients.values():
            c.latest = data  # an older frame still waiting for this page is replaced
            c.wake.set()

    def state_changed(self) -> None:
        if not self._state_due:
            self._state_due = True
            self.loop.call_later(STATE_DELAY_S, self._send_state)

    def _send_state(self) -> None:
        self._state_due = False
        if self.clients:
            message = {"type": "state", "state": self.state()}
            for c in self.clients.values():
                c.say(message)

    def _roles(self) -> None:
        for c in self.clients.values():
            c.say({"type": "role", "role": "controller" if c.id == self.controller else "watcher",
                   "controller": self.controller, "viewer": c.id})
        self.state_changed()

    # -- from the pages --------------------------------------------------------------------------
    def join(self, ws: WebSocket) -> Client:
        client = Client(self._next, ws)
        self._next += 1
        self.clients[client.id] = client
        if self.controller is None:
            self.controller = client.id
        client.say({"type": "hello", "viewer": client.id, "token_required": self.token_required})
        self._roles()
        client.say({"type": "state", "state": self.state()})
        if self._last is not None:
            client.latest = self._last
        return client

    async def leave(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        if self.controller == client.id:
            self.controller = min(self.clients, default=None)
            if self.engine.recording is not None:
                # Nobody may be left to stop it: the span ends here, written whole.
                await asyncio.to_thread(self.engine.stop_recording, "the controlling page disconnected")
            self._roles()

    async def handle(self, client: Client, raw) -> None:
        seq = None
        try:
            if not client.limit.allow():
                raise Refused(f"flood: more than {protocol.RATE_PER_S:g} messages a second; this one is dropped")
            entry = self.engine.frozen or self.engine.on_screen
            w, h = (entry.frame.width, entry.frame.height) if entry is not None else (0, 0)
            cmd = protocol.parse(raw, w, h)
            seq = cmd["seq"]
            if cmd["type"] == "ack":
                if cmd["drawn"]:
                    client.drawn = cmd["frame"]
                client.inflight = max(0, client.inflight - 1)
                client.wake.set()
                return
            if cmd["type"] == "take_control":
                self.controller = client.id
                self._roles()
                client.say({"type": "ok", "seq": seq})
                return
            if client.id != self.controller:
                raise Refused(f"viewer {self.controller} controls the prompts; send take_control to take over")
            if entry is None and cmd["type"] != "record":
                raise Refused("no frame yet")
            client.say({"type": "ok", "seq": seq, **(await self._carry_out(cmd) or {})})
        except Refused as e:
            client.say({"type": "refused", "seq": seq, "reason": str(e)})
        except Exception as e:  # a fault in carrying it out: this message fails, the session goes on
            log.exception("viewer %d: message failed", client.id)
            client.say({"type": "refused", "seq": seq, "reason": f"failed: {type(e).__name__}: {e}"})

    async def _carry_out(self, cmd: dict) -> dict | None:
        kind, engine = cmd["type"], self.engine
        if kind in EDITS:
            return engine.edit(cmd)
        if kind == "freeze":
            engine.freeze()
        elif kind == "unfreeze":
            engine.unfreeze()
        elif kind == "seek":
            engine.seek(cmd.get("frame"), cmd.get("step"))
        elif kind == "record":
            if cmd["on"]:
                return await asyncio.to_thread(engine.start_recording)
            return {"recording": await asyncio.to_thread(engine.stop_recording)}
        return None


def create_app(engine, *, token: str | None = None, start: dict | None = None) -> Starlette:
    """The ASGI app over `engine`; token: asked of every request when set (another
    address than 127.0.0.1); start: keyword arguments of engine.start() (at server start)."""
    hub = Hub(engine, token is not None)
    files = {path: (resources.files("medsam_edge.viewer").joinpath("static", name).read_bytes(), kind)
             for path, (name, kind) in FILES.items()}

    def query(request) -> str:
        return f"?token={token}" if token else ""

    async def page(request: Request) -> Response:
        body, kind = files[request.url.path]
        if request.url.path == "/":
            body = body.replace(b"{{QUERY}}", query(request).encode())
        return Response(body, media_type=kind)

    async def api_state(request: Request) -> Response:
        return JSONResponse(hub.state(masks=request.query_params.get("masks") == "rle"))

    async def socket(ws: WebSocket) -> None:
        await ws.accept()
        client = hub.join(ws)
        sender = asyncio.create_task(client.send_loop())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                await hub.handle(client, raw if raw is not None else message.get("bytes") or b"")
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            await hub.leave(client)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        hub.attach(asyncio.get_running_loop())
        engine.start(**(start or {}))
        try:
            yield
        finally:
            for c in list(hub.clients.values()):
                with contextlib.suppress(Exception):
                    await c.ws.close(1001)
            await asyncio.to_thread(engine.close)

    routes = [Route(path, page) for path in FILES] + [Route("/api/state", api_state), WebSocketRoute("/ws", socket)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return Guard(app, token)


class Guard:
    """Token, Host and Origin checks in front of the app, and the page's security headers."""

    def __init__(self, app: Starlette, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        why = self._refuse(scope, headers, host)
        if why is not None:
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008, "reason": why})
            else:
                await PlainTextResponse(why, status_code=403)(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", _csp(host).encode("latin-1")),
                         (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"cache-control", b"no-store"), (b"x-frame-options", b"DENY")]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, with_headers)

    def _refuse(self, scope, headers: dict, host: str) -> str | None:
        if self.token is None and host.rsplit(":", 1)[0] not in LOOPBACK_NAMES:
            return f"Host {host[:80]!r} is not this machine's loopback address"
        if self.token is not None:
            from urllib.parse import parse_qs

            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return "a valid token is required (the URL `medsam-edge view` printed)"
        if scope["type"] == "websocket":
            origin = headers.get("origin")
            if origin is not None and origin != f"http://{host}":
                return f"cross-origin socket refused (Origin {origin[:80]})"
        return None


def _csp(host: str) -> str:
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
            f"connect-src 'self' ws://{host}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
