"""Fuzz: damaged copies of real files through the real command line, one subprocess each.

Each family starts from real files (pydicom's bundled ultrasound DICOMs, a short MP4 this
test writes with OpenCV, PNGs, prompts files, the exported tiny model directory) and
damages them: truncations, corrupted byte ranges, edited headers. Every case must
- exit 0 or 2 (2 with one line of ours last), never with a traceback;
- end within CASE_SECONDS (no hang) under RLIMIT_AS = robust_helpers.MEMORY_LIMIT (a
  runaway allocation fails and shows as a traceback or a kill);
- leave --out following the output rule (robust_helpers.check_outputs).

The default run is a fixed, seeded set of a few cases per family (about a minute and a
half on an idle 2-core machine; two cases run at a time). MEDSAM_FUZZ_SEEDS=N adds N-1
further random cases per family for a longer run by hand:
    MEDSAM_FUZZ_SEEDS=20 .venv/bin/python -m pytest -q -m fuzz tests/test_fuzz.py -s
`-s` prints each case's outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from robust_helpers import check_outputs, cli, write_mp4

pytestmark = pytest.mark.fuzz

SEEDS = max(1, int(os.environ.get("MEDSAM_FUZZ_SEEDS", "1")))
CASE_SECONDS = 120
MAX_FRAMES = "6"  # enough to reach the damage in these short files, few enough to stay quick


def _bundled(name: str) -> bytes:
    return Path(get_testdata_file(name, download=False)).read_bytes()


# -- damage ----------------------------------------------------------------------------
def truncate(data: bytes, share: float) -> bytes:
    return data[: max(0, int(len(data) * share))]


def corrupt(data: bytes, rng: np.random.Generator, lo: int, hi: int, ranges: int = 3, length: int = 512) -> bytes:
    """`ranges` random byte ranges of `length` somewhere in data[lo:hi] overwritten with noise."""
    out = bytearray(data)
    hi = min(hi, len(out))
    for _ in range(ranges):
        start = int(rng.integers(lo, max(lo + 1, hi - length)))
        out[start:start + length] = rng.integers(0, 256, len(out[start:start + length]), np.uint8).tobytes()
    return bytes(out)


def pixel_data_offset(data: bytes) -> int:
    """Where the (7FE0,0010) element starts in a little-endian DICOM file."""
    return data.rfind(b"\xe0\x7f\x10\x00")


def edit_dicom(data: bytes, **edits) -> bytes:
    from io import BytesIO

    ds = pydicom.dcmread(BytesIO(data))
    for key, value in edits.items():
        if key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, key, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims width x height (CRCs right), with the given IDAT data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# -- cases -----------------------------------------------------------------------------
@dataclass
class Case:
    family: str
    name: str
    build: Callable  # (folder, rng, model) -> (model_dir, source, extra argv)
    outcome: dict = field(default_factory=dict)


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _prompts(folder: Path, text: str, suffix: str = ".json") -> list[str]:
    return ["--prompts", str(_file(folder, "prompts" + suffix, text.encode() if isinstance(text, str) else text))]


ECHO_BOX = ["--box", "160,60,210,125"]


def dicom_cases(seed: int) -> list[Case]:
    cine, rgb = "examples_ybr_color.dcm", "examples_rgb_color.dcm"

    def on(name, make, argv=ECHO_BOX):
        return lambda f, rng, m: (m, str(_file(f, "in.dcm", make(rng))), argv)

    cases = [
        ("cut-in-header", on(cine, lambda rng: truncate(_bundled(cine), 0.002))),
        ("cut-in-pixels", on(cine, lambda rng: truncate(_bundled(cine), 0.5))),
        ("cut-native", on(rgb, lambda rng: truncate(_bundled(rgb), 0.6))),
        ("corrupt-fragments", on(cine, lambda rng: corrupt(_bundled(cine), rng, pixel_data_offset(_bundled(cine)) + 200,
                                                           len(_bundled(cine))))),
        ("corrupt-header", on(cine, lambda rng: corrupt(_bundled(cine), rng, 132, 700, ranges=2, length=48))),
        ("frames-1e9", on(cine, lambda rng: edit_dicom(_bundled(cine), NumberOfFrames=10**9))),
        ("frames-0", on(cine, lambda rng: edit_dicom(_bundled(cine), NumberOfFrames=0))),
        ("rows-65535", on(rgb, lambda rng: edit_dicom(_bundled(rgb), Rows=65535))),
        ("bits-allocated-12", on(rgb, lambda rng: edit_dicom(_bundled(rgb), BitsAllocated=12))),
        ("samples-per-pixel-2", on(rgb, lambda rng: edit_dicom(_bundled(rgb), SamplesPerPixel=2))),
        ("photometric-garbage", on(rgb, lambda rng: edit_dicom(_bundled(rgb), PhotometricInterpretation="XYZ"))),
        ("syntax-swapped", on(cine, lambda rng: edit_dicom(_bundled(cine), TransferSyntaxUID="1.2.840.10008.1.2.4.90"))),
        ("frame-time-negative", on(cine, lambda rng: edit_dicom(_bundled(cine), FrameTime=-40))),
    ]
    if seed:
        rng = np.random.default_rng(seed)
        share = float(rng.uniform(0.01, 0.99))
        n = int(rng.integers(1, 6))
        cases = [(f"cut-{share:.3f}", on(cine, lambda r, s=share: truncate(_bundled(cine), s))),
                 (f"corrupt-{n}x", on(cine, lambda r, k=n: corrupt(_bundled(cine), r, 132, len(_bundled(cine)), k)))]
    return [Case("dicom", name, build) for name, build in cases]


def video_cases(seed: int) -> list[Case]:
    def on(make):
        def build(f, rng, m):
            clean = write_mp4(f / "clean.mp4", frames=int(MAX_FRAMES), size=(160, 120))
            return m, str(_file(f, "in.mp4", make(clean.read_bytes(), rng))), ["--box", "5,30,60,90"]
        return build

    def middle(data, rng):
        mdat = data.find(b"mdat")
        return corrupt(data, rng, mdat + len(data[mdat:]) // 3, mdat + 2 * len(data[mdat:]) // 3, ranges=2,
                       length=4000)

    cases = [
        ("cut-30%", on(lambda d, rng: truncate(d, 0.3))),
        ("cut-80%", on(lambda d, rng: truncate(d, 0.8))),
        ("corrupt-middle", on(middle)),
        ("corrupt-index", on(lambda d, rng: corrupt(d, rng, 40, d.find(b"mdat"), ranges=2, length=64))),
        ("no-moov", on(lambda d, rng: d.replace(b"moov", b"free", 1))),
        ("random-bytes", on(lambda d, rng: rng.integers(0, 256, 20000, np.uint8).tobytes())),
    ]
    if seed:
        rng = np.random.default_rng(seed)
        share = float(rng.uniform(0.01, 0.99))
        cases = [(f"cut-{share:.3f}", on(lambda d, r, s=share: truncate(d, s))),
                 ("corrupt-anywhere", on(lambda d, r: corrupt(d, r, 0, len(d), ranges=int(r.integers(1, 4)))))]
    return [Case("mp4", name, build) for name, build in cases]


def _png(rng: np.random.Generator) -> bytes:
    image = cv2.GaussianBlur(rng.integers(0, 255, (96, 128), np.uint8), (7, 7), 2)
    return cv2.imencode(".png", image)[1].tobytes()


def png_cases(seed: int) -> list[Case]:
    def on(make):
        return lambda f, rng, m: (m, str(_file(f, "in.png", make(_png(rng), rng))), ["--box", "10,10,60,60"])

    def folder(f, rng, m):
        d = f / "frames"
        d.mkdir()
        for i in range(3):
            _file(d, f"f{i}.png", _png(rng))
        _file(d, "f1.png", truncate((d / "f1.png").read_bytes(), 0.4))
        return m, str(d), ["--box", "10,10,60,60"]

    cases = [
        ("cut-50%", on(lambda d, rng: truncate(d, 0.5))),
        ("corrupt-idat", on(lambda d, rng: corrupt(d, rng, 40, len(d) - 12, ranges=2, length=32))),
        ("ihdr-60000x60000", on(lambda d, rng: png_with_header(60000, 60000))),
        ("ihdr-zero", on(lambda d, rng: png_with_header(0, 0))),
        ("zero-bytes", on(lambda d, rng: b"")),
        ("folder-one-cut", folder),
    ]
    if seed:
        rng = np.random.default_rng(seed)
        share = float(rng.uniform(0.01, 0.99))
        cases = [(f"cut-{share:.3f}", on(lambda d, r, s=share: truncate(d, s))),
                 ("corrupt-anywhere", on(lambda d, r: corrupt(d, r, 0, len(d), ranges=2, length=16)))]
    return [Case("png", name, build) for name, build in cases]


def prompt_cases(seed: int) -> list[Case]:
    echo = "pydicom:examples_ybr_color.dcm"

    def on(text, suffix=".json"):
        return lambda f, rng, m: (m, echo, _prompts(f, text, suffix))

    many = json.dumps({"0": [[160, 60, 210, 125]] * 70})
    cases = [
        ("json-cut", on('{"0": [[160, 60, 210, 1')),
        ("json-deep", on("[" * 100_000 + "]" * 100_000)),
        ("json-strings", on('{"0": [["a", "b", "c", "d"]]}')),
        ("json-nan", on('{"0": [[NaN, 60, 210, 125]]}')),
        ("json-huge-numbers", on('{"0": [[1e308, 60, 1e309, 125]]}')),
        ("json-negative-frame", on('{"-4": [[160, 60, 210, 125]]}')),
        ("json-frame-text", on('[{"frame": "x", "boxes": [[160, 60, 210, 125]]}]')),
        ("json-70-prompts", on(many)),
        ("json-labels-mismatch", on('{"0": [{"box": [160, 60, 210, 125], "points": [[170, 80]], "labels": [1, 0]}]}')),
        ("json-binary", on(bytes(range(256)) * 4)),
        ("csv-missing-column", on("frame,x0,y0,x1\n0,1,2,3\n", ".csv")),
        ("csv-text", on("frame,x0,y0,x1,y1\nzero,a,b,c,d\n", ".csv")),
    ]
    if seed:
        rng = np.random.default_rng(seed)
        text = json.dumps({"0": [[160, 60, 210, 125]]})
        k = int(rng.integers(0, len(text)))
        cases = [(f"json-cut-at-{k}", on(text[:k])),
                 ("json-byte-flip", on(corrupt(text.encode(), rng, 0, len(text), ranges=1, length=2)))]
    return [Case("prompts", name, build) for name, build in cases]


def model_cases(seed: int) -> list[Case]:
    def on(damage):
        def build(f, rng, m):
            copy = f / "model"
            shutil.copytree(m, copy)
            damage(copy, rng)
            return str(copy), "pydicom:examples_ybr_color.dcm", ECHO_BOX
        return build

    def manifest(change):
        def damage(d, rng):
            m = json.loads((d / "manifest.json").read_text())
            change(m)
            (d / "manifest.json").write_text(json.dumps(m))
        return damage

    def rewrite(name, make):
        return lambda d, rng: (d / name).write_bytes(make((d / name).read_bytes(), rng))

    cases = [
        ("manifest-cut", rewrite("manifest.json", lambda b, rng: truncate(b, 0.5))),
        ("manifest-binary", rewrite("manifest.json", lambda b, rng: rng.integers(0, 256, 300, np.uint8).tobytes())),
        ("manifest-list", rewrite("manifest.json", lambda b, rng: b"[1, 2, 3]")),
        ("size-edited", manifest(lambda m: m["preprocess"].update(size=512))),
        ("model-id-edited", manifest(lambda m: m.update(model_id="lite_medsam"))),
        ("hash-edited", manifest(lambda m: m["encoder"].update(sha256="f" * 64))),
        ("encoder-cut", rewrite("encoder.onnx", lambda b, rng: truncate(b, 0.5))),
        ("decoder-corrupt", rewrite("decoder.onnx", lambda b, rng: corrupt(b, rng, 0, len(b)))),
        ("decoder-missing", lambda d, rng: (d / "decoder.onnx").unlink()),
    ]
    if seed:
        rng = np.random.default_rng(seed)
        part = ("encoder.onnx", "decoder.onnx", "manifest.json")[int(rng.integers(0, 3))]
        share = float(rng.uniform(0, 1))
        cases = [(f"{part}-cut-{share:.2f}", rewrite(part, lambda b, r, s=share: truncate(b, s))),
                 (f"{part}-corrupt", rewrite(part, lambda b, r: corrupt(b, r, 0, len(b), ranges=2, length=64)))]
    return [Case("model", name, on(damage)) for name, damage in cases]


def tiny_cases(seed: int) -> list[Case]:
    """Tiny pictures through every image step (motion's DIS flow crashed under 12 px and on
    wide, short pictures): near repeats, so reuse and motion estimation are asked."""
    def folder(h, w):
        def build(f, rng, m):
            base = rng.integers(0, 256, (h, w), np.uint8)
            d = f / "frames"
            d.mkdir()
            for k in range(4):
                cv2.imwrite(str(d / f"{k:02d}.png"), np.roll(base, k, axis=1))  # 1 px moves: near repeats
            # Under 16 px the overlay video is refused before the run (one line, exit 2).
            return str(m), str(d), ["--box", f"0,0,{w},{h}"] + (["--no-video"] if rng.integers(0, 2) else [])
        return build

    sizes = [(1, 1), (2, 40), (40, 2), (10, 10), (12, 100), (20, 120), (31, 160), (32, 160)]
    if seed:
        rng = np.random.default_rng(seed)
        sizes = [(int(rng.integers(1, 48)), int(rng.integers(1, 400))) for _ in range(3)]
    cases = [(f"{h}x{w}", folder(h, w)) for h, w in sizes]
    cases.append(("rtdose-10x10", lambda f, rng, m: (str(m), "pydicom:rtdose.dcm", ["--box", "1,1,9,9"])))
    return [Case("tiny", name, build) for name, build in cases]


FAMILIES = {"dicom": dicom_cases, "mp4": video_cases, "png": png_cases, "prompts": prompt_cases,
            "model": model_cases, "tiny": tiny_cases}


# -- running ---------------------------------------------------------------------------
def _run(case: Case, folder: Path, model: Path, seed: int) -> Case:
    folder.mkdir(parents=True)
    model_dir, source, extra = case.build(folder, np.random.default_rng(seed), model)
    out = folder / "out"
    t0 = time.monotonic()
    r = cli("run", str(model_dir), source, *extra, "--out", str(out), "--max-frames", MAX_FRAMES, "--masks", "png",
            timeout=CASE_SECONDS)
    case.outcome = {"exit": r.returncode, "seconds": round(time.monotonic() - t0, 1),
                    "last": (r.stderr.strip().splitlines() or [""])[-1], "stderr": r.stderr,
                    "out": out}
    return case


def _check(case: Case) -> list[str]:
    o = case.outcome
    problems = []
    if o["exit"] not in (0, 2):
        problems.append(f"exit {o['exit']}")
    if "Traceback" in o["stderr"]:
        problems.append("traceback: " + o["stderr"][o["stderr"].index("Traceback"):][:600])
    if o["exit"] == 2 and not (o["last"].startswith("medsam-edge run: error: ") or ": error: " in o["last"]):
        problems.append(f"exit 2 without our one-line error last: {o['last']!r}")
    try:
        summary = check_outputs(o["out"])
        o["complete"] = None if summary is None else summary["complete"]
        o["frames"] = None if summary is None else summary.get("frames")
    except AssertionError as e:
        problems.append(f"output rule broken: {e}")
    return problems


@pytest.mark.parametrize("family", list(FAMILIES))
def test_damaged_inputs_end_cleanly(family, tiny_model_dir, tmp_path):
    cases = [(c, seed) for seed in range(SEEDS) for c in FAMILIES[family](seed)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda cs: _run(cs[0], tmp_path / f"{cs[1]}-{cs[0].name}", tiny_model_dir.path, cs[1]),
                             cases))
    failures = []
    for case in done:
        problems = _check(case)
        o = case.outcome
        print(f"{family:8s} {case.name:24s} exit {o['exit']} {o['seconds']:5.1f}s complete={o.get('complete')} "
              f"frames={o.get('frames')} | {o['last'][:110]}")
        if problems:
            failures.append(f"{case.name}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)
