"""`medsam-edge view MODEL_DIR SOURCE`: the clinician's viewer, a web page over the real-time session.

Only the standard library is imported at the top: the server stack comes with the
`viewer` extra and is imported when the command runs, where its absence is one line.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import secrets
import socket
from pathlib import Path

from medsam_edge.atomic import check_output
from medsam_edge.errors import InputError

log = logging.getLogger("medsam_edge.view")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 8765
EXTRA = "pip install 'medsam-edge[viewer]'"
DESCRIPTION = """\
Serve a web page showing SOURCE with the masks of MODEL_DIR drawn over the very frame they
belong to, through the real-time session. Drag a box on the picture, click points (shift:
negative), freeze to edit on one frame with the decoder alone, scroll back through the last
seconds, record the run's standard outputs. GET /api/state is the page's state as JSON.

Listens on 127.0.0.1 unless --host says otherwise; any other address asks a token, printed
once in the URL, of the page, the API and the socket."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from medsam_edge.contract import PRECISIONS
    from medsam_edge.runtime.cli_args import add_pixel_spacing
    from medsam_edge.runtime.command import SOURCE_HELP

    p = sub.add_parser("view", help="a live web page: draw boxes on the stream, see masks follow",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="model directory written by `medsam-edge export`")
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                   "asks a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1", help="a starting box; repeatable")
    p.add_argument("--point", action="append", default=[], metavar="x,y[,label]",
                   help="a starting click for the one --box (label 1 positive, 0 negative); repeatable")
    p.add_argument("--prompts", type=Path, metavar="FILE",
                   help="starting prompts: the entry of a `run --prompts` file for the first frame shown")
    p.add_argument("--track", action="store_true", help="propagate each prompt from the last mask; unfreezing "
                   "tracks from the edited prompts")
    p.add_argument("--paused", action="store_true", help="open frozen (on --start-frame)")
    p.add_argument("--start-frame", type=int, default=0, metavar="N", help="the first frame shown (default 0)")
    p.add_argument("--no-loop", action="store_true", help="play a file once (default: loop)")
    p.add_argument("--buffer-seconds", type=float, default=3.0,
                   help="seconds kept for scrolling back while frozen (default 3; at most 256 MB of frames)")
    p.add_argument("--record-dir", type=Path, default=Path("recordings"),
                   help="where Record writes, one new folder per recording (default ./recordings)")
    p.add_argument("--stale-ms", type=float, default=1000.0,
                   help="the page marks a mask stale when its embedding or decode is older (default 1000)")
    p.add_argument("--jpeg-quality", type=int, default=80, help="JPEG quality of the frames sent (default 80)")
    p.add_argument("--backend", default="auto", help="auto, or a backend `medsam-edge info` lists")
    p.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="model precision (default auto: the fastest here that the model's fidelity report allows)")
    p.add_argument("--rebuild", choices=("never", "if-stale", "always"), default="never",
                   help="TensorRT engines missing or stale: never (default), if-stale, always")
    p.add_argument("--threads", type=int, help="CPU threads (default all; the decoder gets one)")
    add_pixel_spacing(p)
    p.set_defaults(func=run)


def server_stack():
    """(starlette, uvicorn), or the one line that says which extra brings them."""
    try:
        import starlette  # noqa: F401
        import uvicorn
        import websockets  # noqa: F401
    except ImportError as e:
        raise InputError(f"view needs the viewer extra ({e.name} is not installed): {EXTRA}") from None
    return uvicorn


def _check(args) -> None:
    for flag, value, low in (("--port", args.port, 0), ("--start-frame", args.start_frame, 0),
                             ("--threads", args.threads, 1)):
        if value is not None and value < low:
            raise InputError(f"{flag} {value}: expected a whole number of at least {low}")
    if args.port > 65535:
        raise InputError(f"--port {args.port}: ports go up to 65535")
    if not 0 < args.buffer_seconds <= 60:
        raise InputError(f"--buffer-seconds {args.buffer_seconds:g}: expected more than 0 and at most 60")
    if not 1 <= args.jpeg_quality <= 100:
        raise InputError(f"--jpeg-quality {args.jpeg_quality}: expected 1 to 100")
    if not args.stale_ms > 0:
        raise InputError(f"--stale-ms {args.stale_ms:g}: expected a positive number of milliseconds")
    # Recordings go in new folders under it: said now, not when the user presses record.
    check_output(args.record_dir, "--record-dir")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before any model is loaded: a port in use is one line at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise InputError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not past a live listener, only TIME_WAIT
        sock.bind(address)
        sock.listen(64)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise InputError(f"--port {port}: {host}:{port} is in use (another `medsam-edge view`?); choose "
                             "another --port, or 0 for any free one") from None
        raise InputError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


def url(host: str, port: int, token: str | None) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    try:
        if ipaddress.ip_address(shown).version == 6:
            shown = f"[{shown}]"
    except ValueError:
        pass
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def starting_prompts(args, source):
    from medsam_edge.runtime.prompts import Prompt, parse_box, parse_point
    from medsam_edge.runtime.schedule import PromptSchedule

    if args.prompts and (args.box or args.point):
        raise InputError("give --box/--point or --prompts, not both")
    if args.prompts:
        return PromptSchedule.from_file(args.prompts).prompts_for(args.start_frame)
    boxes = [parse_box(b) for b in args.box]
    clicks = [parse_point(p) for p in args.point]
    if clicks and len(boxes) > 1:
        raise InputError("--point with several --box: say which box each click belongs to in a --prompts file")
    if clicks:
        return [Prompt.of(box=boxes[0] if boxes else None, points=[c[0] for c in clicks],
                          labels=[c[1] for c in clicks])]
    return [Prompt.of(box=b) for b in boxes]


def run(args: argparse.Namespace) -> int:
    uvicorn = server_stack()
    from medsam_edge.runtime import spacing
    from medsam_edge.runtime.predictor import Predictor
    from medsam_edge.runtime.prompts import validate_prompts
    from medsam_edge.runtime.sources import open_source
    from medsam_edge.viewer.engine import Engine
    from medsam_edge.viewer.objects import Objects
    from medsam_edge.viewer.server import create_app

    _check(args)
    sock = listen(args.host, args.port)
    source = predictor = None
    try:
        source = open_source(args.source, loop=not args.no_loop)
        if source.frame_count and not source.is_live and args.start_frame >= source.frame_count:
            raise InputError(f"--start-frame {args.start_frame}: {source.description} has {source.frame_count} "
                             f"frames (0 to {source.frame_count - 1})")
        prompts = starting_prompts(args, source)
        predictor = Predictor(args.model_dir, args.backend, args.precision, threads=args.threads, realtime=True,
                              rebuild=args.rebuild)
        pixel_calibration = spacing.resolve_pixel_calibration(source, args.pixel_spacing)
        objects = Objects()
        if prompts:
            objects.set_prompts(validate_prompts(prompts, *_size(source), "--box/--prompts"))
        engine = Engine(predictor, source, objects, track=args.track, pixel_calibration=pixel_calibration,
                        buffer_seconds=args.buffer_seconds, stale_ms=args.stale_ms, jpeg_quality=args.jpeg_quality,
                        record_dir=args.record_dir, dicom_seg=_dicom_seg(source, predictor, args.track))
        token = None if args.host in LOOPBACK else secrets.token_urlsafe(24)
        app = create_app(engine, token=token, start={"paused": args.paused, "start_frame": args.start_frame})
        port = sock.getsockname()[1]
        backend = predictor.backend
        log.info("model %s, backend %s (%s, %s), source %s", predictor.model_dir.model_id, backend.name,
                 backend.device, backend.precision, engine.source_info["name"])
        # The token is said here once, in the URL, and nowhere else (no access log).
        print(f"medsam-edge view: open {url(args.host, port, token)} (Ctrl-C stops)", flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, ws_max_size=1 << 20,
                                ws_per_message_deflate=False, lifespan="on", timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    except BaseException:
        if source is not None:
            source.close()
        raise
    finally:
        sock.close()
        if predictor is not None:
            predictor.close()
    return 0


def _size(source) -> tuple[int, int]:
    """(height, width) of the source's frames, from its first one (a file starts again at
    the next pass; a live source goes on)."""
    frame = next(iter(source), None)
    if frame is None:
        raise InputError(f"{source.description}: no frame to check the starting prompts against")
    return frame.height, frame.width


def _dicom_seg(source, predictor, track: bool):
    """A recording's DICOM Segmentation for a DICOM source. A looping cine is fine here (run
    refuses --dicom-seg with --loop): the sink keeps each source frame's first answer."""
    geometry, path = getattr(source, "geometry", None), getattr(source, "path", None)
    if geometry is None or path is None:
        return None
    from medsam_edge.runtime.dicom_seg import SEG_FILE, Algorithm, DicomSegSink

    algorithm = Algorithm.from_run(predictor.model_dir, predictor.backend.describe())
    return lambda out: DicomSegSink(Path(out) / SEG_FILE, path, algorithm, sop_instance_uid=geometry.sop_instance_uid,
                                    tracked=track)
