// medsam-edge view: the page. Frames arrive as one binary message each (header JSON + JPEG)
// with the masks of that very frame; prompts go back in frame pixels. No build step, no
// library, nothing fetched but this server's socket. window.medsamView is the page's state,
// read by the tests and the benchmark.
"use strict";
(() => {
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const S = {
    state: null, role: "watcher", viewer: null, frame: null, selected: null, selectedPoint: null,
    zoom: 1, panx: 0, pany: 0, view: null, seq: 0, drag: null,
    stats: { packets: 0, bytes: 0, drawn: 0, ownFrame: 0, frames: 0, framesWithMasks: 0, lastFrame: -1, editLatencies: [],
             sent: {}, refused: [], oks: {} },
  };
  window.medsamView = S;
  let ws = null, pending = null, decoding = false, drawQueued = false, lastUpdate = 0, lastRender = 0;

  // -- the socket -----------------------------------------------------------------------------
  function connect() {
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" + query);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") { S.stats.bytes += ev.data.length; onText(JSON.parse(ev.data)); }
      else { S.stats.bytes += ev.data.byteLength; onFrame(ev.data); }
    };
    ws.onclose = () => { banner("connection to the viewer lost; reload to reconnect"); };
  }
  function send(msg) {
    if (!ws || ws.readyState !== 1) return null;
    if (msg.type !== "ack") { msg.seq = ++S.seq; S.stats.sent[msg.seq] = performance.now(); }
    ws.send(JSON.stringify(msg));
    return msg.seq;
  }
  function onText(msg) {
    if (msg.type === "state") { S.state = msg.state; render(); schedule(); }
    else if (msg.type === "hello") { S.viewer = msg.viewer; }
    else if (msg.type === "role") { S.role = msg.role; render(); }
    else if (msg.type === "ok") { S.stats.oks[msg.seq] = msg; if (msg.id && S.pendingSelect === msg.seq) S.selected = msg.id; }
    else if (msg.type === "refused") { S.stats.refused.push(msg); note(msg.reason); }
  }

  // -- frames: decode the newest, draw, ack (a slow page gets fewer, newer frames) --------------
  function onFrame(buffer) {
    S.stats.packets++;
    const view = new DataView(buffer);
    const n = view.getUint32(0);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
    let jpeg = buffer.byteLength > 4 + n ? new Blob([new Uint8Array(buffer, 4 + n)], { type: "image/jpeg" }) : null;
    if (pending) {
      // Replaced before it was drawn; a frozen frame's picture is kept for the masks after it.
      if (!jpeg && pending.header.frame === header.frame) jpeg = pending.jpeg;
      ack(pending.header);
    }
    pending = { header, jpeg };
    if (!decoding) decodeNext();
  }
  function ack(header, drawn = false) { send({ type: "ack", frame: header.frame, drawn }); }
  async function decodeNext() {
    if (!pending) return;
    const { header, jpeg } = pending;
    pending = null;
    decoding = true;
    try {
      const old = S.frame;
      // An edit on a frozen frame comes with the same picture: only its masks are new.
      const same = old && old.header.frame === header.frame && old.header.width === header.width && header.frozen;
      if (!same && !jpeg) { ack(header); decoding = false; if (pending) decodeNext(); return; }  // no picture to draw on
      const bitmap = same ? old.bitmap : await createImageBitmap(jpeg);
      if (old && old.bitmap !== bitmap) old.bitmap.close();
      S.frame = { header, bitmap, masks: header.masks.map(maskBitmap) };
      if (!old || old.header.edit !== header.edit || old.header.frozen !== header.frozen) render();
      S.frame.drawnAt = null;
      schedule();
    } catch (e) { note("a frame could not be decoded: " + e); ack(header); }
    decoding = false;
    if (pending) decodeNext();
  }
  function schedule() {
    if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); }
  }

  // A mask's RLE (runs over its bbox, off first) -> fill and outline pictures of the bbox.
  function maskBitmap(m) {
    if (!m.bbox) return null;
    const [x, y, w, h] = m.bbox;
    const on = new Uint8Array(w * h);
    let at = 0;
    for (let i = 0; i < m.rle.length; i++) {
      if (i % 2) on.fill(1, at, at + m.rle[i]);
      at += m.rle[i];
    }
    const [r, g, b] = [1, 3, 5].map((k) => parseInt(m.colour.slice(k, k + 2), 16));
    const fill = new ImageData(w, h), edge = new ImageData(w, h);
    for (let j = 0, i = 0; j < h; j++) {
      for (let k = 0; k < w; k++, i++) {
        if (!on[i]) continue;
        const o = i * 4;
        fill.data[o] = r; fill.data[o + 1] = g; fill.data[o + 2] = b; fill.data[o + 3] = 255;
        if (k === 0 || k === w - 1 || j === 0 || j === h - 1 || !on[i - 1] || !on[i + 1] || !on[i - w] || !on[i + w]) {
          edge.data[o] = r; edge.data[o + 1] = g; edge.data[o + 2] = b; edge.data[o + 3] = 255;
        }
      }
    }
    return { x, y, w, h, fill: toCanvas(fill), edge: toCanvas(edge) };
  }
  function toCanvas(image) {
    const c = new OffscreenCanvas(image.width, image.height);
    c.getContext("2d").putImageData(image, 0, 0);
    return c;
  }

  // -- where the picture is: letterboxed in the canvas, then zoomed and panned ------------------
  function layout() {
    const cw = canvas.clientWidth, ch = canvas.clientHeight;
    const fw = S.frame ? S.frame.header.width : 1, fh = S.frame ? S.frame.header.height : 1;
    const scale = Math.min(cw / fw, ch / fh) * S.zoom;
    S.view = { scale, ox: (cw - fw * scale) / 2 + S.panx, oy: (ch - fh * scale) / 2 + S.pany, fw, fh, cw, ch };
    return S.view;
  }
  function toFrame(ev) {
    const r = canvas.getBoundingClientRect(), v = layout();
    return { x: (ev.clientX - r.left - v.ox) / v.scale, y: (ev.clientY - r.top - v.oy) / v.scale };
  }
  const clampX = (x, inner) => Math.min(Math.max(x, 0), S.view.fw - (inner ? 0.01 : 0));
  const clampY = (y, inner) => Math.min(Math.max(y, 0), S.view.fh - (inner ? 0.01 : 0));
  const r2 = (v) => Math.round(v * 100) / 100;

  function draw() {
    drawQueued = false;
    const dpr = window.devicePixelRatio || 1;
    const cw = canvas.clientWidth, ch = canvas.clientHeight;
    if (canvas.width !== Math.round(cw * dpr) || canvas.height !== Math.round(ch * dpr)) {
      canvas.width = Math.round(cw * dpr); canvas.height = Math.round(ch * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    const f = S.frame;
    if (!f) return;
    const v = layout();
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(f.bitmap, v.ox, v.oy, v.fw * v.scale, v.fh * v.scale);
    ctx.imageSmoothingEnabled = false;
    const style = $("style").value, opacity = $("opacity").value / 100;
    for (const m of f.masks) {
      if (!m) continue;
      const dx = v.ox + m.x * v.scale, dy = v.oy + m.y * v.scale, dw = m.w * v.scale, dh = m.h * v.scale;
      if (style !== "contour") { ctx.globalAlpha = opacity; ctx.drawImage(m.fill, dx, dy, dw, dh); }
      if (style !== "fill") { ctx.globalAlpha = 1; ctx.drawImage(m.edge, dx, dy, dw, dh); }
    }
    ctx.globalAlpha = 1;
    for (const o of objects()) drawPrompt(o, v);
    if (S.drag && S.drag.kind === "new" && S.drag.moved) {
      const d = S.drag;
      ctx.strokeStyle = "#fff"; ctx.setLineDash([4, 3]);
      ctx.strokeRect(v.ox + Math.min(d.x0, d.x) * v.scale, v.oy + Math.min(d.y0, d.y) * v.scale,
                     Math.abs(d.x - d.x0) * v.scale, Math.abs(d.y - d.y0) * v.scale);
      ctx.setLineDash([]);
    }
    if (f.drawnAt === null) {
      f.drawnAt = performance.now();
      counted(f.header);
      ack(f.header, true);
    }
    hud(f.header);
    if (performance.now() - lastRender > 500) render();  // the objects' areas and how they were made, live
  }
  function counted(h) {
    const st = S.stats;
    st.drawn++;
    const own = h.masks.length > 0 && h.masks_frame === h.frame;  // masks drawn on the frame they were made for
    if (h.frame !== st.lastFrame) { st.frames++; st.lastFrame = h.frame; if (own) st.framesWithMasks++; }
    if (own) st.ownFrame++;
    if (h.edit !== null && h.edit !== undefined) {
      for (const s of Object.keys(st.sent)) {
        if (+s <= h.edit) { st.editLatencies.push(performance.now() - st.sent[s]); delete st.sent[s]; }
      }
    }
    for (const s of Object.keys(st.sent)) if (performance.now() - st.sent[s] > 10000) delete st.sent[s];
  }

  // The objects as drawn: the state's, at the positions the frame on screen was answered with
  // when live (a tracked box moves with its mask), the user's own while frozen or dragging.
  function objects() {
    const list = S.state ? S.state.prompts.map((o) => ({ ...o })) : [];
    const live = S.state && !S.state.frozen && S.frame;
    for (const o of list) {
      const m = live && S.frame.header.masks.find((k) => k.id === o.id);
      if (m && m.prompt && (!S.drag || S.drag.id !== o.id)) {
        o.box = m.prompt.box || null; o.points = m.prompt.points || []; o.labels = m.prompt.labels || [];
      }
      if (S.drag && S.drag.id === o.id && S.drag.preview) Object.assign(o, S.drag.preview);
    }
    return list;
  }
  function drawPrompt(o, v) {
    const X = (x) => v.ox + x * v.scale, Y = (y) => v.oy + y * v.scale;
    ctx.strokeStyle = o.colour; ctx.fillStyle = o.colour; ctx.lineWidth = o.id === S.selected ? 2 : 1;
    if (o.box) {
      const [x0, y0, x1, y1] = o.box;
      if (o.id === S.selected) ctx.setLineDash([6, 3]);
      ctx.strokeRect(X(x0), Y(y0), X(x1) - X(x0), Y(y1) - Y(y0));
      ctx.setLineDash([]);
      if (o.id === S.selected) for (const [hx, hy] of [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) ctx.fillRect(X(hx) - 3, Y(hy) - 3, 6, 6);
    }
    (o.points || []).forEach(([x, y], k) => {
      ctx.beginPath(); ctx.arc(X(x), Y(y), 5, 0, 2 * Math.PI);
      if (o.labels[k]) ctx.fill(); else { ctx.lineWidth = 2; ctx.stroke(); }
      if (o.id === S.selected && S.selectedPoint === k) { ctx.strokeStyle = "#fff"; ctx.stroke(); ctx.strokeStyle = o.colour; }
    });
  }

  // -- the heads-up line, the objects, the buttons -------------------------------------------
  function hud(h) {
    const u = h.hud || {}, age = (a) => (a ? `${a.ms === null ? "?" : Math.round(a.ms)} ms (${a.frames} fr)` : "-");
    const lat = u.capture_to_mask_ms;
    $("hud").textContent = `${u.backend || "?"} ${u.device || ""} ${u.precision || ""}\n` +
      `${u.masks_per_s} masks/s · frame ${h.frame}${h.frozen ? " (frozen)" : ""}\n` +
      `capture→mask p50 ${lat ? lat.p50 : "-"} ms, p99 ${lat ? lat.p99 : "-"} ms\n` +
      `embedding age ${age(u.embedding_age)} · decode age ${age(u.decode_age)}`;
    $("badge").hidden = !u.stale;
  }
  function render() {
    lastRender = performance.now();
    const st = S.state;
    const control = S.role === "controller";
    for (const id of ["freeze", "back", "fwd", "delete", "clear", "record"]) $(id).disabled = !control;
    $("control").hidden = control;
    if (!st) return;
    $("freeze").textContent = st.frozen ? "Unfreeze" : "Freeze";
    $("back").disabled = $("fwd").disabled = !control || !st.frozen;
    $("record").classList.toggle("on", !!st.recording);
    $("record").textContent = st.recording ? "■ Stop recording" : "● Record";
    const words = [];
    if (st.status === "ended" || st.status === "failed") words.push(st.message);
    else if (st.message) words.push(st.message);
    if (st.frozen && st.frame) words.push(`frozen on frame ${st.frame.index}`);
    if (st.recording) words.push(`● recording ${st.recording.folder}`);
    else if (st.last_recording) words.push(`recorded ${st.last_recording.folder}: ${st.last_recording.complete ? "complete" : "not complete"}`);
    banner(words.join(" · "));
    const ul = $("objects");
    ul.textContent = "";
    for (const o of st.prompts) {
      const li = document.createElement("li");
      const m = (S.frame && S.frame.header.masks.find((k) => k.id === o.id)) || o.mask;
      const area = !m ? "no mask yet" : (m.area_mm2 !== null && m.area_mm2 !== undefined ? `${m.area_mm2.toFixed(1)} mm²` : `${m.area_px} px`);
      const made = m && m.made ? ` · ${m.made.reuse || ""}` : "";
      li.textContent = `#${o.id} ${area}${made}${m && m.lost ? " · LOST" : ""}`;
      li.style.borderColor = o.colour;
      li.classList.toggle("selected", o.id === S.selected);
      li.onclick = () => { S.selected = o.id; S.selectedPoint = null; render(); schedule(); };
      ul.appendChild(li);
    }
  }
  function banner(text) { $("banner").hidden = !text; $("banner").textContent = text || ""; }
  function note(text) {
    const li = document.createElement("li");
    li.textContent = text;
    $("log").prepend(li);
    while ($("log").children.length > 5) $("log").lastChild.remove();
  }

  // -- prompts by hand: box drag, clicks, move, resize, delete -------------------------------
  function hit(p) {  // what a press at frame point p takes hold of: a point, a corner, a box
    const tol = 7 / (S.view ? S.view.scale : 1);
    const list = objects();
    const inside = (b) => p.x >= b[0] && p.x <= b[2] && p.y >= b[1] && p.y <= b[3];
    for (const o of list) {
      const k = (o.points || []).findIndex(([x, y]) => Math.hypot(p.x - x, p.y - y) <= tol);
      if (k >= 0) return { kind: "point", id: o.id, k, o };
    }
    const sel = list.find((o) => o.id === S.selected);
    if (sel && sel.box) {
      for (const [i, j] of [[0, 1], [2, 1], [0, 3], [2, 3]]) {
        if (Math.abs(p.x - sel.box[i]) <= tol && Math.abs(p.y - sel.box[j]) <= tol) return { kind: "corner", id: sel.id, i, j, o: sel };
      }
      if (inside(sel.box)) return { kind: "box", id: sel.id, o: sel };
    }
    const o = list.find((k) => k.box && inside(k.box));
    return o ? { kind: "box", id: o.id, o } : null;
  }
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("mousedown", (e) => {
    if (e.button !== 0 || !S.frame || S.role !== "controller") return;
    const p = toFrame(e), h = hit(p);
    const negative = e.shiftKey || $("negative").checked;
    if (h) {
      const wasSelected = S.selected === h.id;
      S.selected = h.id; S.selectedPoint = h.kind === "point" ? h.k : null;
      S.drag = { kind: h.kind, id: h.id, x0: p.x, y0: p.y, x: p.x, y: p.y, o: h.o, i: h.i, j: h.j, k: h.k, negative,
                 clickAddsPoint: h.kind === "box" && wasSelected, moved: false };
    } else {
      S.drag = { kind: "new", x0: clampX(p.x), y0: clampY(p.y), x: clampX(p.x), y: clampY(p.y), negative, moved: false };
    }
    render(); schedule();
  });
  window.addEventListener("mousemove", (e) => {
    const d = S.drag;
    if (!d) return;
    const p = toFrame(e);
    d.x = clampX(p.x); d.y = clampY(p.y);
    if (Math.hypot(d.x - d.x0, d.y - d.y0) * S.view.scale > 3) d.moved = true;
    if (d.moved && d.kind !== "new") {
      d.preview = moved(d);
      // Frozen: every edit costs the decoder alone, so the mask follows the drag.
      if (S.state && S.state.frozen && performance.now() - lastUpdate > 80) { lastUpdate = performance.now(); sendUpdate(d.id, d.preview); }
    }
    schedule();
  });
  window.addEventListener("mouseup", (e) => {
    const d = S.drag;
    if (!d || e.button !== 0) return;
    S.drag = null;
    const p = { x: d.x, y: d.y };
    if (d.kind === "new" && d.moved) {
      const box = [Math.min(d.x0, p.x), Math.min(d.y0, p.y), Math.max(d.x0, p.x), Math.max(d.y0, p.y)].map(r2);
      if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) S.pendingSelect = send({ type: "add", box });
    } else if (d.moved) {
      const next = moved(d);
      patch(d.id, next); sendUpdate(d.id, next);
    } else if (d.kind === "new" || d.clickAddsPoint) {
      const label = d.negative ? 0 : 1, point = [r2(clampX(d.x0, true)), r2(clampY(d.y0, true))];
      if (S.selected !== null && objects().some((o) => o.id === S.selected)) send({ type: "point", id: S.selected, point, label });
      else S.pendingSelect = send({ type: "add", points: [point], labels: [label] });
    }
    render(); schedule();
  });
  function moved(d) {
    const o = d.o, dx = d.x - d.x0, dy = d.y - d.y0;
    const out = { box: o.box ? o.box.slice() : null, points: (o.points || []).map((q) => q.slice()), labels: (o.labels || []).slice() };
    if (d.kind === "point") out.points[d.k] = [clampX(o.points[d.k][0] + dx, true), clampY(o.points[d.k][1] + dy, true)];
    else if (d.kind === "corner") { out.box[d.i] = clampX(d.x); out.box[d.j] = clampY(d.y); }
    else if (d.kind === "box" && o.box) {
      const w = o.box[2] - o.box[0], h = o.box[3] - o.box[1];
      const x0 = Math.min(Math.max(o.box[0] + dx, 0), S.view.fw - w), y0 = Math.min(Math.max(o.box[1] + dy, 0), S.view.fh - h);
      out.box = [x0, y0, x0 + w, y0 + h];
    }
    if (out.box) out.box = [Math.min(out.box[0], out.box[2]), Math.min(out.box[1], out.box[3]), Math.max(out.box[0], out.box[2]), Math.max(out.box[1], out.box[3])];
    return out;
  }
  let lastSent = null;
  function sendUpdate(id, p) {
    const box = p.box ? p.box.map(r2) : null;
    if (box && (box[2] - box[0] < 1 || box[3] - box[1] < 1)) return;
    const msg = { type: "update", id, box, points: p.points.map((q) => q.map(r2)), labels: p.labels };
    const same = JSON.stringify(msg);
    if (same === lastSent) return;  // the drag's last move already sent it
    lastSent = same;
    send(msg);
  }
  function patch(id, p) {  // drawn at once; the server's state confirms it
    const o = S.state && S.state.prompts.find((k) => k.id === id);
    if (o) Object.assign(o, p);
  }
  function deleteSelected() {
    const o = objects().find((k) => k.id === S.selected);
    if (!o) return;
    if (S.selectedPoint !== null && o.points.length > (o.box ? 0 : 1)) {
      const points = o.points.filter((_, k) => k !== S.selectedPoint), labels = o.labels.filter((_, k) => k !== S.selectedPoint);
      sendUpdate(o.id, { box: o.box, points, labels });
    } else {
      send({ type: "delete", id: o.id });
      S.selected = null;
    }
    S.selectedPoint = null;
  }
  function zoomAt(factor, px, py) {
    const v = layout(), fx = (px - v.ox) / v.scale, fy = (py - v.oy) / v.scale;
    S.zoom = Math.min(Math.max(S.zoom * factor, 1), 16);
    const scale = Math.min(v.cw / v.fw, v.ch / v.fh) * S.zoom;
    S.panx = px - fx * scale - (v.cw - v.fw * scale) / 2; S.pany = py - fy * scale - (v.ch - v.fh * scale) / 2;
    if (S.zoom === 1) S.panx = S.pany = 0;
    schedule();
  }
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  $("zoomin").onclick = () => zoomAt(1.5, canvas.clientWidth / 2, canvas.clientHeight / 2);
  $("zoomout").onclick = () => zoomAt(1 / 1.5, canvas.clientWidth / 2, canvas.clientHeight / 2);
  $("fit").onclick = () => { S.zoom = 1; S.panx = S.pany = 0; schedule(); };
  $("freeze").onclick = () => send({ type: S.state && S.state.frozen ? "unfreeze" : "freeze" });
  $("back").onclick = () => send({ type: "seek", step: -1 });
  $("fwd").onclick = () => send({ type: "seek", step: 1 });
  $("delete").onclick = deleteSelected;
  $("clear").onclick = () => { send({ type: "clear" }); S.selected = null; };
  $("record").onclick = () => send({ type: "record", on: !(S.state && S.state.recording) });
  $("control").onclick = () => send({ type: "take_control" });
  $("opacity").oninput = $("style").onchange = schedule;
  window.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || S.role !== "controller") return;
    if (e.key === " ") { e.preventDefault(); $("freeze").onclick(); }
    else if (e.key === "ArrowLeft" && S.state && S.state.frozen) send({ type: "seek", step: -1 });
    else if (e.key === "ArrowRight" && S.state && S.state.frozen) send({ type: "seek", step: 1 });
    else if (e.key === "Delete" || e.key === "Backspace") deleteSelected();
    else if (e.key === "Escape") { S.selected = null; S.selectedPoint = null; render(); schedule(); }
  });
  new ResizeObserver(schedule).observe(canvas);
  S.send = send;  // for the benchmark's scripted edits
  connect();
})();
