"""The one JSON of the viewer's state: GET /api/state returns it, the page gets it on its
socket. Frame pixels throughout; nothing from a DICOM header but sizes (the source is
named by its file name or its URL without credentials)."""

from __future__ import annotations

import re
from pathlib import PurePath

SCHEMA = 1
_KINDS = {"DicomSource": "dicom", "ImageSource": "images", "ArraySource": "array"}


def source_info(source) -> dict:
    """What the page may know of the source: a safe name, its kind and rate."""
    live = bool(getattr(source, "is_live", False))
    kind = _KINDS.get(type(source).__name__) or ("live" if live else "video")
    text = str(getattr(source, "description", "source"))
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        name = re.sub(r"//[^/@]*@", "//", text)  # rtsp://user:password@host -> rtsp://host
    elif live:
        name = text  # a camera index or a pipeline
    else:
        name = PurePath(text).name or text  # a file's name, not the folders above it
    return {"name": name, "kind": kind, "live": live,
            "fps": getattr(source, "fps", None), "frames": getattr(source, "frame_count", None),
            "loop": bool(getattr(source, "loop", False))}


def build(engine, viewers: dict, masks: bool = False) -> dict:
    """The state; `masks` adds each mask's RLE (as the frame packets carry it) for tools and tests."""
    entry = engine.frozen or engine.on_screen
    on_screen = {m["id"]: m for m in entry.masks} if entry is not None else {}
    prompts = []
    for obj in engine.objects.to_json():
        m = on_screen.get(obj["id"])
        if m is not None and m.get("prompt") and engine.track and engine.frozen is None:
            obj.update(box=m["prompt"].get("box"), points=m["prompt"].get("points", []),
                       labels=m["prompt"].get("labels", []))
        obj["mask"] = None if m is None else {
            "area_px": m["area_px"], "area_mm2": m["area_mm2"], "score": m["score"], "lost": m["lost"],
            "made": m["made"], **({"bbox": m["bbox"], "rle": m["rle"]} if masks else {})}
        prompts.append(obj)
    pixel_calibration = engine.pixel_calibration
    frozen = engine.frozen
    return {
        "schema": SCHEMA,
        "status": engine.status,
        "message": engine.message,
        "source": engine.source_info,
        "frame": None if entry is None else {"index": entry.index, "timestamp": round(float(entry.frame.timestamp), 4),
                                             "width": entry.frame.width, "height": entry.frame.height,
                                             "made": entry.made, "edit": entry.seq},
        "frozen": frozen is not None,
        "edited": engine.edited,
        "embedding": None if frozen is None else {"own": frozen.own is not None, "frame": frozen.index},
        "track": engine.track,
        "buffer": engine.ring.span(),
        "prompts": prompts,
        "hud": engine.hud.snapshot(None if entry is None else entry.record),
        "spacing": {"known": bool(pixel_calibration is not None and pixel_calibration.known),
                    "source": None if pixel_calibration is None else pixel_calibration.source},
        "recording": None if engine.recording is None else engine.recording.describe(),
        "last_recording": engine.last_recording,
        "counters": dict(engine.counters),
        "viewers": viewers,
    }
