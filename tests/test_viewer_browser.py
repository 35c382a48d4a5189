"""`medsam-edge view` in a real browser: Debian's Chromium, driven over its DevTools
socket with real mouse events, on the real page of a real server on 127.0.0.1.

One LiteMedSAM server (pydicom's echocardiography cine, opened frozen on frame 5) and one
browser serve the module, in order: a box dragged on the frozen frame gives the mask the
Predictor gives on that frame and box, clicks add points, zoom keeps the mapping exact,
unfreeze plays, record writes the run's outputs, freeze again; a watcher, a page of
another origin, a wrong token. Skipped with the reason where Chromium is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from dicom_files import make_dicom
from robust_helpers import ECHO, check_outputs

# A real Chromium against a real server: not in `make test-fast` (docs/testing.md).
pytestmark = pytest.mark.integration

pytest.importorskip("starlette", reason="the viewer extra is not installed (pip install 'medsam-edge[viewer]')")
from medsam_edge.bench import viewer_browser as vb  # noqa: E402
from medsam_edge.viewer.protocol import rle_decode  # noqa: E402

if vb.find_chromium() is None:
    pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does where apt works)",
                allow_module_level=True)

START = 5
BOX = (160.0, 60.0, 210.0, 125.0)  # a chamber of the heart, in frame pixels


@pytest.fixture(scope="module")
def server(lite_model_dir, tmp_path_factory):
    records = tmp_path_factory.mktemp("recordings")
    with vb.ViewServer(lite_model_dir.path, ECHO, "--paused", "--start-frame", str(START), "--record-dir",
                       str(records)) as srv:
        srv.records = records
        yield srv


@pytest.fixture(scope="module")
def browser():
    with vb.Browser(width=1000, height=640) as b:
        yield b


@pytest.fixture(scope="module")
def tab(server, browser):
    tab = browser.tab(server.url)
    tab.wait_for("window.medsamView && window.medsamView.stats.drawn > 0")
    yield tab
    assert tab.errors() == []


@pytest.fixture(scope="module")
def frame5():
    from medsam_edge.runtime.sources import open_source

    with open_source(ECHO) as source:
        return next(f for f in source if f.index == START).image


def layout(tab, zoom: float = 1.0) -> tuple:
    """Where the frame lies on the page, worked out here from the canvas and the frame size
    (letterboxed, centred, zoomed about the centre), not read from the page's own numbers."""
    left, top, cw, ch = tab.evaluate("(() => { const r = document.getElementById('view').getBoundingClientRect();"
                                     " return [r.left, r.top, r.width, r.height]; })()")
    fw, fh = tab.evaluate("[medsamView.frame.header.width, medsamView.frame.header.height]")
    scale = min(cw / fw, ch / fh) * zoom
    return left + (cw - fw * scale) / 2, top + (ch - fh * scale) / 2, scale


def to_page(where, x, y) -> tuple[int, int]:
    ox, oy, s = where
    return round(ox + x * s), round(oy + y * s)  # a mouse lands on whole CSS pixels


def to_frame(where, px, py) -> tuple[float, float]:
    ox, oy, s = where
    return (px - ox) / s, (py - oy) / s


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def mask_of(state: dict, k: int) -> np.ndarray:
    m = state["prompts"][k]["mask"]
    return rle_decode(m if m["bbox"] else None, state["frame"]["width"], state["frame"]["height"])


def predictor_mask(model_dir, image, box, points=None, labels=None) -> np.ndarray:
    from medsam_edge.runtime import Predictor

    with Predictor(model_dir.path) as p:
        p.set_image(image)
        masks, _ = p.predict(boxes=[box], points=points, labels=labels)
    return masks[0]


def test_a_box_dragged_on_the_frozen_frame_gives_the_predictors_mask(server, tab, lite_model_dir, frame5):
    before = tab.screenshot()
    where = layout(tab)
    (ax, ay), (bx, by) = to_page(where, *BOX[:2]), to_page(where, *BOX[2:])
    tab.drag(ax, ay, bx, by)
    state = server.wait_state(lambda s: s["prompts"] and s["prompts"][0]["mask"] and s["frame"]["edit"], masks=True)
    assert state["frozen"] and state["frame"]["index"] == START
    expected = [*to_frame(where, ax, ay), *to_frame(where, bx, by)]
    box = state["prompts"][0]["box"]
    assert np.allclose(box, expected, atol=0.011), (box, expected)  # exact, to the page's 2 decimals
    shown = mask_of(state, 0)
    assert shown.sum() == state["prompts"][0]["mask"]["area_px"] > 200
    assert dice(shown, predictor_mask(lite_model_dir, frame5, box)) >= 0.99

    # The screenshot: the mask's pixels, inside the box, are tinted with the object's colour (green).
    tab.wait_for("medsamView.frame.header.masks.length > 0")
    after = tab.screenshot().astype(int)
    ys, xs = np.nonzero(shown)
    ox, oy, s = where
    px, py = np.round(ox + (xs + 0.5) * s).astype(int), np.round(oy + (ys + 0.5) * s).astype(int)
    greener = (after[py, px, 1] - after[py, px, 0]) - (before[py, px, 1].astype(int) - before[py, px, 0])
    assert np.mean(greener > 20) > 0.9
    # Inside the box drawn (a mask may reach its edge: one frame pixel of slack).
    assert (px >= ax - s).all() and (px <= bx + s).all() and (py >= ay - s).all() and (py <= by + s).all()
    (fx0, fy0), (fx1, fy1) = to_page(where, 20.0, 180.0), to_page(where, 70.0, 230.0)  # far from the box
    assert np.abs(after[fy0:fy1, fx0:fx1] - before[fy0:fy1, fx0:fx1]).max() < 30  # the picture untouched there


def test_clicks_add_points_positive_and_with_shift_negative(server, tab, lite_model_dir, frame5):
    where = layout(tab)
    inside = to_page(where, 185.0, 100.0)
    tab.click(*inside)
    state = server.wait_state(lambda s: len(s["prompts"][0]["points"]) == 1 and s["frame"]["edit"] >= 2)
    assert state["prompts"][0]["labels"] == [1]
    assert np.allclose(state["prompts"][0]["points"][0], to_frame(where, *inside), atol=0.011)
    negative = to_page(where, 200.0, 70.0)
    tab.click(*negative, shift=True)
    state = server.wait_state(lambda s: len(s["prompts"][0]["points"]) == 2 and s["frame"]["edit"] >= 3, masks=True)
    p = state["prompts"][0]
    assert p["labels"] == [1, 0]
    expected = predictor_mask(lite_model_dir, frame5, p["box"], points=p["points"], labels=p["labels"])
    assert dice(mask_of(state, 0), expected) >= 0.99


def test_zoomed_the_mapping_stays_exact_and_delete_removes(server, tab):
    tab.evaluate("document.getElementById('zoomin').click()")  # 1.5x about the centre
    where = layout(tab, zoom=1.5)
    (ax, ay), (bx, by) = to_page(where, 100.0, 150.0), to_page(where, 140.0, 190.0)
    tab.drag(ax, ay, bx, by)
    state = server.wait_state(lambda s: len(s["prompts"]) == 2 and s["prompts"][1]["mask"])
    expected = [*to_frame(where, ax, ay), *to_frame(where, bx, by)]
    assert np.allclose(state["prompts"][1]["box"], expected, atol=0.011), (state["prompts"][1]["box"], expected)
    tab.wait_for(f"medsamView.selected === {state['prompts'][1]['id']}")
    tab.call("Input.dispatchKeyEvent", type="keyDown", key="Delete", code="Delete", windowsVirtualKeyCode=46)
    tab.call("Input.dispatchKeyEvent", type="keyUp", key="Delete", code="Delete", windowsVirtualKeyCode=46)
    server.wait_state(lambda s: len(s["prompts"]) == 1)
    tab.evaluate("document.getElementById('fit').click()")


def test_unfreeze_plays_record_writes_the_outputs_freeze_again(server, tab):
    tab.evaluate("document.getElementById('freeze').click()")  # unfreeze
    server.wait_state(lambda s: not s["frozen"])
    drawn = tab.evaluate("medsamView.stats.ownFrame")
    tab.wait_for(f"medsamView.stats.ownFrame >= {drawn + 2} && !medsamView.frame.header.frozen", timeout=120)
    header = tab.evaluate("medsamView.frame.header")
    assert header["masks_frame"] == header["frame"] and header["masks"][0]["id"] == 1

    tab.evaluate("document.getElementById('record').click()")
    server.wait_state(lambda s: s["recording"] and s["recording"]["frames"] >= 3, timeout=120)
    tab.evaluate("document.getElementById('record').click()")
    state = server.wait_state(lambda s: s["last_recording"] and s["recording"] is None)
    folder = server.records / state["last_recording"]["folder"]
    summary = check_outputs(folder)
    assert summary["complete"] is True and summary["frames"] >= 3
    assert {"overlay.mp4", "frames.jsonl", "masks.npz", "segmentation.dcm"} <= {p.name for p in folder.iterdir()}
    tab.wait_for("document.getElementById('banner').textContent.includes('complete')")

    tab.evaluate("document.getElementById('freeze').click()")
    state = server.wait_state(lambda s: s["frozen"] and s["embedding"]["own"] and s["frame"]["made"] == "frozen",
                              timeout=120)
    assert tab.wait_for(f"medsamView.frame.header.frozen && medsamView.frame.header.frame === {state['frame']['index']}")


def test_a_second_page_watches_and_another_origin_is_refused(server, browser, tab):
    watcher = browser.tab(server.url)
    watcher.wait_for("window.medsamView && medsamView.stats.drawn > 0 && medsamView.role === 'watcher'")
    assert watcher.evaluate("document.getElementById('control').hidden") is False
    stranger = browser.tab("about:blank")
    outcome = stranger.evaluate("new Promise((done) => { const ws = new WebSocket('%s/ws');"
                                " ws.onopen = () => done('open'); ws.onclose = () => done('closed'); })"
                                % server.base.replace("http://", "ws://"))
    assert outcome == "closed"
    assert server.state()["viewers"]["count"] == 2


def test_a_wrong_token_gets_nothing_and_the_end_of_a_source_is_said(browser, tiny_model_dir, tmp_path):
    path, _ = make_dicom(tmp_path / "short.dcm", frames=3, regions=None)
    with vb.ViewServer(tiny_model_dir.path, path, "--host", "127.0.0.2", "--no-loop") as srv:
        wrong = browser.tab(f"{srv.base}/?token=not-{srv.token}")
        assert "valid token is required" in wrong.wait_for("document.body && document.body.innerText")
        assert wrong.evaluate("typeof window.medsamView") == "undefined"
        page = browser.tab(srv.url)
        page.wait_for("window.medsamView && medsamView.frame !== null && "
                      "document.getElementById('banner').textContent.includes('ended')", timeout=120)
        assert page.evaluate("medsamView.frame.header.frame") >= 0  # the last frame stays
