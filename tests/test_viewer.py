"""`medsam-edge view` without a browser: the socket protocol's checks, the RLE the page
draws, the objects and their versions, and a real server (the CLI in a process, the tiny
model) refusing what it must: bad messages one by one, floods, oversized payloads, other
origins, other Host names, wrong tokens, a second controller; a recording whose page
leaves mid-way; a port in use; no patient data on the page."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from medsam_edge.runtime.prompts import Prompt
from medsam_edge.viewer import protocol
from medsam_edge.viewer.objects import Objects, Version
from medsam_edge.viewer.protocol import Refused
from medsam_edge.viewer.publish import Versions
from medsam_edge.viewer.state import source_info

from dicom_files import SECRET_ID, SECRET_NAME, make_dicom
from robust_helpers import check_outputs, cli, one_line_error

W, H = 160, 120


# -- the protocol, the masks, the objects -----------------------------------------------------
def test_rle_round_trip():
    rng = np.random.default_rng(0)
    masks = [np.zeros((H, W), bool), np.ones((H, W), bool), rng.random((H, W)) > 0.7]
    one = np.zeros((H, W), bool)
    one[H - 1, W - 1] = True
    blob = np.zeros((H, W), bool)
    blob[10:50, 30:90] = True
    blob[20:30, 40:50] = False  # a hole
    for mask in [*masks, one, blob]:
        encoded = protocol.rle(mask)
        assert (encoded is None) == (not mask.any())
        assert np.array_equal(protocol.rle_decode(encoded, W, H), mask)
    assert protocol.rle(one) == {"bbox": [W - 1, H - 1, 1, 1], "rle": [0, 1]}


@pytest.mark.parametrize("raw, reason", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    (b"\x00\x01", "binary"),
    ('{"type": "explode"}', "unknown type"),
    ('{"type": "add", "box": [NaN, 0, 10, 10]}', "not a finite number"),
    ('{"type": "add", "box": [0, 0, Infinity, 10]}', "not a finite number"),
    ('{"type": "add", "box": [0, 0, 1e999, 10]}', "not a finite number"),
    ('{"type": "add", "box": [0, 0, 500, 10]}', "not inside the 160x120 frame"),
    ('{"type": "add", "box": [50, 50, 10, 10]}', "x0 < x1"),
    ('{"type": "add", "box": [10, 10, 10.5, 30]}', "smaller than one pixel"),
    ('{"type": "add", "box": [0, 0, "10", 10]}', "expected a number"),
    ('{"type": "add", "box": [0, 0, true, 10]}', "expected a number"),
    ('{"type": "add", "box": [0, 0, 10]}', "expected [x0, y0, x1, y1]"),
    ('{"type": "add"}', "give a box or at least one point"),
    ('{"type": "point", "id": 1, "point": [-1, 5]}', "outside the 160x120 frame"),
    ('{"type": "point", "id": 1, "point": [5, 5], "label": 2}', "expected 1 (positive) or 0"),
    ('{"type": "point", "id": 1.5, "point": [5, 5]}', "id must be a whole number"),
    ('{"type": "add", "points": [[1, 1]], "labels": [1, 0]}', "one 1 or 0 per point"),
    ('{"type": "add", "box": [0, 0, 9, 9], "points": ' + json.dumps([[1, 1]] * 9) + "}", "at most 8 beside a box"),
    ('{"type": "update", "id": 1, "box": null, "points": []}', "delete it instead"),
    ('{"type": "record", "on": "yes"}', "true or false"),
    ('{"type": "ack", "seq": "x", "frame": 1}', "seq must be a whole number"),
    ('{"type": "ack", "frame": ' + "1" * 40 + "}", "whole number"),
    ('{"type": "clear", "pad": "' + "x" * protocol.MAX_MESSAGE_BYTES + '"}', "at most"),
])
def test_bad_messages_are_refused_with_a_reason(raw, reason):
    with pytest.raises(Refused, match=None) as e:
        protocol.parse(raw, W, H)
    assert reason in str(e.value)


def test_good_messages_parse_to_frame_pixels():
    assert protocol.parse('{"seq": 3, "type": "add", "box": [1.5, 2, 30, 40]}', W, H) == {
        "type": "add", "seq": 3, "box": [1.5, 2.0, 30.0, 40.0], "points": [], "labels": []}
    cmd = protocol.parse('{"type": "point", "id": 2, "point": [159.5, 0], "label": 0}', W, H)
    assert (cmd["point"], cmd["label"]) == ([159.5, 0.0], 0)
    assert protocol.parse('{"type": "seek", "step": -1}', W, H)["step"] == -1


def test_objects_ids_edits_and_versions():
    objects = Objects()
    assert objects.apply({"type": "add", "seq": 1, "box": [0, 0, 10, 10], "points": [], "labels": []}) == {"id": 1}
    assert objects.apply({"type": "add", "seq": 2, "box": None, "points": [[5, 5]], "labels": [1]}) == {"id": 2}
    objects.apply({"type": "point", "seq": 3, "id": 1, "point": [4, 4], "label": 0})
    v = objects.version
    assert v.ids == (1, 2) and v.seq == 3
    assert v.prompts[0].labels.tolist() == [0] and v.prompts[1].box is None
    with pytest.raises(Refused, match="no object with id 7"):
        objects.apply({"type": "delete", "seq": 4, "id": 7})
    objects.apply({"type": "delete", "seq": 5, "id": 1})
    assert objects.version.ids == (2,)
    objects.follow([Prompt.of(points=[[9, 9]])], (2,))  # a tracked answer moved it
    assert objects.to_json()[0]["points"] == [[9.0, 9.0]]
    for k in range(protocol.MAX_OBJECTS - 1):
        objects.apply({"type": "add", "seq": None, "box": [0, 0, 5, 5], "points": [], "labels": []})
    with pytest.raises(Refused, match="at most"):
        objects.apply({"type": "add", "seq": None, "box": [0, 0, 5, 5], "points": [], "labels": []})


def test_answers_are_tagged_with_the_version_they_answer():
    a, b = Prompt.of(box=[0, 0, 10, 10]), Prompt.of(box=[20, 20, 40, 40])
    old, new = Version(1, (1, 2), (a, b), 1), Version(2, (2,), (b,), 2)
    versions = Versions(track=False)
    versions.handed(old)
    versions.handed(new)
    assert versions.match([a, b]) is old  # a frame begun before the delete: ids 1 and 2
    assert versions.match([b]) is new
    assert versions.match([Prompt.of(box=[1, 1, 9, 9])]) is None  # unknown: no mask is shown
    tracked = Versions(track=True)
    tracked.handed(old)
    assert tracked.match([a, b]) is old
    tracked.handed(new)
    assert tracked.match([Prompt.of(box=[1, 2, 11, 12]), b]) is old  # begun before the delete, then tracked
    assert tracked.match([Prompt.of(box=[22, 21, 41, 40])]) is None  # not yet answered with the new prompts
    assert tracked.match([b]) is new  # the first answer with them: the tracker starts there
    assert tracked.match([Prompt.of(box=[22, 21, 41, 40])]) is new  # then moves
    tracked.handed(Version(3, (), (), 3))
    assert tracked.match([Prompt.of(box=[23, 21, 42, 40])]) is None  # cleared: a tracker still going is not shown
    c = Version(4, (5,), (Prompt.of(box=[5, 5, 30, 30]),), 4)
    tracked.handed(c)
    assert tracked.match([Prompt.of(box=[23, 21, 42, 40])]) is None  # the old track, after a clear and an add
    assert tracked.match(list(c.prompts)) is c


def test_source_names_hide_credentials_and_folders():
    class Stream:
        description, is_live, fps = "rtsp://nurse:secret@10.0.0.9/probe", True, None

    class File:
        description, is_live, fps = "/home/dr/patients/Doe Jane/clip.mp4", False, 30.0

    assert "secret" not in json.dumps(source_info(Stream()))
    assert source_info(File())["name"] == "clip.mp4"


def test_flood_is_refused_then_recovers():
    limit = protocol.RateLimit(rate=0.0, burst=5)
    assert [limit.allow() for _ in range(7)] == [True] * 5 + [False] * 2
    limit.rate, limit.last = 1000.0, limit.last - 1.0  # a second later at 1000/s
    assert limit.allow()


# -- a real server: the CLI in a process, the tiny model ---------------------------------------
browser = pytest.importorskip("medsam_edge.bench.viewer_browser")
pytest.importorskip("starlette", reason="the viewer extra is not installed (pip install 'medsam-edge[viewer]')")
pytest.importorskip("websockets", reason="the viewer extra is not installed (pip install 'medsam-edge[viewer]')")
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


class Page:
    """A page's socket without a browser: JSON out, text messages in (frames counted, not acked)."""

    def __init__(self, server, origin: str | None = "same", token: str | None = "default") -> None:
        token = server.token if token == "default" else token
        url = server.base.replace("http://", "ws://") + "/ws" + (f"?token={token}" if token else "")
        # Entered as a context manager: websockets 17 warns otherwise, and 14-16 do the same.
        self.ws = connect(url, origin=server.base if origin == "same" else origin, open_timeout=30,
                          max_size=None).__enter__()
        self.texts: list[dict] = []
        self.frames: list[dict] = []
        self.seq = 0

    def send(self, msg: dict | str) -> int:
        self.seq += 1
        self.ws.send(msg if isinstance(msg, str) else json.dumps({"seq": self.seq, **msg}))
        return self.seq

    def wait(self, check, timeout: float = 60.0) -> dict:
        for m in self.texts:
            if check(m):
                return m
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            raw = self.ws.recv(timeout=max(0.01, end - time.monotonic()))
            if isinstance(raw, bytes):
                self.frames.append(protocol.unpack(raw)[0])
                continue
            m = json.loads(raw)
            self.texts.append(m)
            if check(m):
                return m
        raise TimeoutError(f"no such message; got {self.texts[-5:]}")

    def frame(self, timeout: float = 60.0) -> dict:
        """The next frame's header (the page's own texts are kept meanwhile)."""
        count = len(self.frames)
        end = time.monotonic() + timeout
        while len(self.frames) == count:
            raw = self.ws.recv(timeout=max(0.01, end - time.monotonic()))
            if isinstance(raw, bytes):
                self.frames.append(protocol.unpack(raw)[0])
            else:
                self.texts.append(json.loads(raw))
        return self.frames[-1]

    def answer(self, seq: int) -> dict:
        return self.wait(lambda m: m.get("seq") == seq and m["type"] in ("ok", "refused"))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def phi_dicom(tmp_path_factory) -> Path:
    path, _ = make_dicom(tmp_path_factory.mktemp("viewer") / "cine.dcm", frames=8, regions=None)
    return path


@pytest.fixture(scope="module")
def server(tiny_model_dir, phi_dicom, tmp_path_factory):
    records = tmp_path_factory.mktemp("recordings")
    with browser.ViewServer(tiny_model_dir.path, phi_dicom, "--box", "20,10,90,70", "--record-dir",
                            str(records), "--pixel-spacing", "0.5") as srv:
        srv.records = records
        srv.wait_state(lambda s: s["frame"] is not None)
        yield srv


def test_serves_its_own_files_and_nothing_else(server):
    for path in ("/", "/viewer.js", "/viewer.css", "/api/state"):
        assert server.get(path)[0] == 200, path
    for path in ("/etc/passwd", "/static/viewer.js", "/../pyproject.toml", "/viewer.js/..%2f..%2fcommand.py",
                 "/index.html", "/api"):
        assert server.get(path)[0] == 404, path
    import urllib.request

    rebinding = urllib.request.Request(server.base + "/api/state", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(rebinding, timeout=30)
    assert e.value.code == 403


def test_no_patient_data_reaches_the_page(server):
    page = Page(server)
    page.wait(lambda m: m["type"] == "state")
    page.frame()
    seen = json.dumps(page.texts) + json.dumps(page.frames) + json.dumps(server.state(masks=True))
    seen += server.get("/")[1].decode() + server.stderr()
    page.close()
    for secret in (SECRET_NAME, SECRET_ID, "Doe", "19700101", "ACC-SECRET"):
        assert secret not in seen
    assert server.state()["source"]["name"] == "cine.dcm"


def test_bad_messages_are_refused_one_by_one_and_the_session_goes_on(server):
    page = Page(server)
    page.wait(lambda m: m["type"] == "role" and m["role"] == "controller")
    bad = ['{"seq": 1, "type": "add", "box": [NaN, 1, 2, 3]}', '{"seq": 2, "type": "point", "id": 999, "point": [5, 5]}',
           '{"seq": 3, "type": "add", "box": [0, 0, 9999, 9]}', "{{{", '{"seq": 5, "type": "delete", "id": -4}',
           '{"seq": 6, "type": "update", "id": 1, "box": [1, 1, 2, 2], "points": [[1e400, 3]]}']
    for raw in bad:
        page.ws.send(raw)
    page.ws.send(json.dumps({"seq": 7, "type": "clear", "pad": "x" * (protocol.MAX_MESSAGE_BYTES + 10)}))
    reasons = {}
    for _ in range(len(bad) + 1):
        m = page.wait(lambda m: m["type"] == "refused" and m not in reasons.values())
        reasons[len(reasons)] = m
    said = " | ".join(m["reason"] for m in reasons.values())
    for words in ("not a finite number", "no object with id 999", "not inside", "not JSON", "no object with id -4",
                  "at most 16384 bytes"):
        assert words in said
    page.seq = 100
    ok = page.answer(page.send({"type": "add", "box": [30, 20, 80, 60]}))
    assert ok["type"] == "ok" and ok["id"]
    state = server.wait_state(lambda s: any(p["id"] == ok["id"] for p in s["prompts"]))
    assert state["status"] == "playing"
    page.answer(page.send({"type": "delete", "id": ok["id"]}))
    page.close()


def test_a_flood_is_refused_message_by_message_then_served_again(server):
    page = Page(server)
    page.wait(lambda m: m["type"] == "role")
    for k in range(int(protocol.BURST) + 50):
        page.ws.send('{"type": "ack", "frame": 0}')
    flood = page.wait(lambda m: m["type"] == "refused" and "flood" in m["reason"])
    assert "messages a second" in flood["reason"]
    time.sleep(int(protocol.BURST) / protocol.RATE_PER_S + 0.5)  # the bucket refills
    page.seq = 1000
    assert page.answer(page.send({"type": "freeze"}))["type"] == "ok"
    assert page.answer(page.send({"type": "unfreeze"}))["type"] == "ok"
    page.close()


def test_a_huge_payload_closes_only_its_own_socket(server):
    page, other = Page(server), Page(server)
    page.wait(lambda m: m["type"] == "role")
    page.ws.send("x" * (2 << 20))  # past the transport's 1 MiB: this socket is closed
    with pytest.raises(Exception):
        page.wait(lambda m: False, timeout=30)
    other.wait(lambda m: m["type"] == "state")
    assert server.state()["status"] == "playing"
    other.close()


def test_cross_origin_sockets_are_refused(server):
    for origin in ("http://evil.example", "null", f"http://localhost:{server.port + 1}"):
        with pytest.raises(InvalidStatus) as e:
            Page(server, origin=origin)
        assert e.value.response.status_code == 403
    Page(server).close()


def test_freeze_scrolls_back_and_edits_on_the_frame_shown(server):
    page = Page(server)
    page.wait(lambda m: m["type"] == "role" and m["role"] == "controller")
    server.wait_state(lambda s: s["buffer"]["frames"] >= 3)
    assert page.answer(page.send({"type": "freeze"}))["type"] == "ok"
    frozen = server.wait_state(lambda s: s["frozen"] and s["embedding"]["own"])
    here = frozen["frame"]["index"]
    assert page.answer(page.send({"type": "seek", "step": -2}))["type"] == "ok"
    back = server.state()
    assert back["frame"]["index"] < here and back["buffer"]["first"] <= back["frame"]["index"]
    gone = page.answer(page.send({"type": "seek", "frame": back["buffer"]["first"] - 1}))
    assert gone["type"] == "refused" and "is not kept" in gone["reason"]
    added = page.answer(page.send({"type": "add", "box": [10, 10, 60, 50]}))
    state = server.wait_state(lambda s: s["frame"]["edit"] == added["seq"], masks=True)
    assert state["frame"]["index"] == back["frame"]["index"] and state["frame"]["made"] == "frozen"
    assert state["embedding"] == {"own": True, "frame": back["frame"]["index"]}
    for p in state["prompts"]:  # --pixel-spacing 0.5: a pixel is 0.25 mm2
        assert p["mask"]["area_mm2"] == pytest.approx(p["mask"]["area_px"] * 0.25)
        assert protocol.rle_decode(p["mask"] if p["mask"]["bbox"] else None, W, H).sum() == p["mask"]["area_px"]
    page.answer(page.send({"type": "delete", "id": added["id"]}))
    assert page.answer(page.send({"type": "unfreeze"}))["type"] == "ok"
    page.close()


def test_one_page_controls_the_prompts_at_a_time(server):
    first = Page(server)
    first.wait(lambda m: m["type"] == "role" and m["role"] == "controller")
    second = Page(server)
    second.wait(lambda m: m["type"] == "role" and m["role"] == "watcher")
    refused = second.answer(second.send({"type": "add", "box": [1, 1, 20, 20]}))
    assert refused["type"] == "refused" and "controls the prompts" in refused["reason"]
    assert second.answer(second.send({"type": "take_control"}))["type"] == "ok"
    first.wait(lambda m: m["type"] == "role" and m["role"] == "watcher")
    assert first.answer(first.send({"type": "freeze"}))["type"] == "refused"
    assert server.state()["viewers"]["controller"] == second.wait(lambda m: m["type"] == "hello")["viewer"]
    first.close()
    second.close()


def test_a_page_leaving_mid_record_leaves_a_complete_recording(server):
    page = Page(server)
    page.wait(lambda m: m["type"] == "role" and m["role"] == "controller")
    started = page.answer(page.send({"type": "record", "on": True}))
    assert started["type"] == "ok", started
    server.wait_state(lambda s: s["recording"] and s["recording"]["frames"] >= 3)
    page.close()  # mid-record
    done = server.wait_state(lambda s: s["last_recording"] and s["last_recording"]["folder"] == started["folder"])
    assert done["last_recording"]["complete"] is True
    folder = server.records / started["folder"]
    summary = check_outputs(folder)
    assert summary["complete"] is True and summary["frames"] >= 3
    assert summary["recording_ended"] == "the controlling page disconnected"
    assert {"overlay.mp4", "frames.jsonl", "masks.npz", "segmentation.dcm"} <= {p.name for p in folder.iterdir()}


def test_off_127_0_0_1_a_token_is_asked_and_the_end_of_the_source_is_said(tiny_model_dir, tmp_path):
    path, _ = make_dicom(tmp_path / "short.dcm", frames=3, regions=None)
    with browser.ViewServer(tiny_model_dir.path, path, "--host", "127.0.0.2", "--no-loop") as srv:
        assert srv.token and srv.base.startswith("http://127.0.0.2:")
        for path in ("/", "/viewer.js", "/api/state"):
            assert srv.get(path, token=None)[0] == 403
            assert srv.get(path, token="wrong-" + srv.token)[0] == 403
            assert srv.get(path)[0] == 200
        assert f"?token={srv.token}" in srv.get("/")[1].decode()  # the page's own files carry it
        with pytest.raises(InvalidStatus):
            Page(srv, token="wrong")
        Page(srv).close()
        state = srv.wait_state(lambda s: s["status"] == "ended")
        assert "ended after 3 frames" in state["message"] and state["frame"] is not None


def test_bad_starts_are_one_line(tiny_model_dir, phi_dicom, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("view", str(tiny_model_dir.path), str(phi_dicom), "--port", str(port))
        assert proc.returncode == 2 and "is in use" in one_line_error(proc)
    proc = cli("view", str(tiny_model_dir.path), str(phi_dicom), "--paused", "--start-frame", "8", "--port", "0")
    assert proc.returncode == 2 and "has 8 frames" in one_line_error(proc)
    proc = cli("view", str(tiny_model_dir.path), str(phi_dicom), "--box", "500,10,600,50", "--port", "0")
    assert proc.returncode == 2 and "outside the 160x120 image" in one_line_error(proc)
    blocker = tmp_path / "blocked" / "starlette"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'starlette'\", name='starlette')\n")
    proc = cli("view", str(tiny_model_dir.path), str(phi_dicom), env={"PYTHONPATH": str(blocker.parent),
                                                                     "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "pip install 'medsam-edge[viewer]'" in one_line_error(proc)
