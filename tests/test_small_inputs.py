"""The smaller bad inputs of issue 15: numbers out of range, an empty PNG, boxes smaller
than a pixel or partly outside, a prompts file past the end, blank-only runs, bad boxes
through the Python API, odd picture shapes and dtypes, and `build` without TensorRT."""

from __future__ import annotations

import json
import logging
import re

import cv2
import numpy as np
import pytest

from medsam_edge.errors import InputError
from medsam_edge.runtime.prompts import Prompt, Prompter, as_prompts, validate_boxes, validate_prompts
from medsam_edge.runtime.schedule import PromptSchedule

from robust_helpers import ECHO, ECHO_BOX, cli, one_line_error


@pytest.mark.parametrize("argv, expected", [
    (["--max-frames", "-1"], "--max-frames -1: expected a whole number of at least 1"),
    (["--max-frames", "0"], "--max-frames 0: expected a whole number of at least 1"),
    (["--threads", "0"], "--threads 0: expected a whole number of at least 1"),
    (["--threads", "-3"], "--threads -3"),
    (["--reuse-max", "-5"], "--reuse-max -5: expected 0 or more"),
    (["--reuse-threshold", "2"], "expected a fraction between 0 and 1"),
])
def test_numbers_out_of_range_are_one_line_errors(tmp_path, argv, expected):
    box = [] if "--box" in argv else ["--box", ECHO_BOX]
    r = cli("run", str(tmp_path / "model"), ECHO, *box, *argv, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    one_line_error(r, expected)


def test_a_zero_byte_png_says_it_is_empty_in_one_line(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    r = cli("run", str(tmp_path / "model"), str(empty), "--box", "1,1,5,5", "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    last = one_line_error(r, "empty.png: empty file (0 bytes)")
    assert "Assertion" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, last


def test_a_sub_pixel_box_is_not_called_outside():
    with pytest.raises(InputError, match=r"smaller than one pixel \(0.5x0.5\)"):
        validate_boxes([[10, 10, 10.5, 10.5]], 100, 100)
    with pytest.raises(InputError, match="outside the 100x100 image"):
        validate_boxes([[99.5, 10, 130, 40]], 100, 100)


def test_a_clipped_box_is_said_once_not_every_frame(caplog):
    prompter = Prompter(PromptSchedule.constant([[-20, 10, 50, 60]]), None)

    class F:
        source, height, width = "clip", 80, 100

    with caplog.at_level(logging.WARNING):
        for i in range(5):
            F.index = i
            (p,) = prompter.prompts_for(F)
            np.testing.assert_array_equal(p.box, [0, 10, 50, 60])
    assert [r.getMessage() for r in caplog.records].count(
        "clip frame 0 prompt 0 box [-20,10,50,60]: clipped to the 100x80 image") == 1
    assert len(caplog.records) == 1


@pytest.mark.parametrize("call", [
    lambda: Prompt.of(box=[1, 2, 3]),
    lambda: Prompt.of(box="1,2,3,4"),
    lambda: Prompt.of(box=[1, 2, "x", 4]),
    lambda: Prompt.of(box=[1, 2, 3, 4], points=[[1, 2, 3]]),
    lambda: Prompt.of(points=[[1, 2]], labels=["yes"]),
    lambda: Prompt.of(points=[[1, 2]], labels=[float("nan")]),
    lambda: as_prompts(5),
    lambda: as_prompts("boxes"),
    lambda: as_prompts([[1, 2, 3]]),
    lambda: as_prompts([[1, 2, 3, 4], [1, 2]]),
    lambda: validate_boxes([[1, 2, 3]], 10, 10),
    lambda: validate_prompts([object()], 10, 10),
], ids=["3-numbers", "string", "non-number", "3-d-point", "label-text", "label-nan", "int", "str", "short-row",
        "ragged", "validate-3", "not-a-prompt"])
def test_bad_prompts_through_the_api_are_input_errors(call):
    with pytest.raises(InputError) as e:
        call()
    assert "\n" not in str(e.value)


def test_session_and_predictor_refuse_bad_boxes_with_input_errors(tiny_model_dir):
    from medsam_edge.runtime.predictor import Predictor

    with Predictor(tiny_model_dir) as p:
        p.set_image(np.full((40, 50), 90, np.uint8)[..., None])  # (H, W, 1) is accepted
        for bad in ([[1, 2, 3]], [["a", 1, 2, 3]], 7):
            with pytest.raises(InputError):
                p.predict(boxes=bad)
        with pytest.raises(InputError):
            p.predict(boxes=[[1, 1, 20, 20]], points=[[1, 2, 3]])
        with p.session() as s:
            with pytest.raises(InputError):
                s.set_prompts(5)


@pytest.mark.parametrize("image, hint", [
    (np.zeros((8, 8), np.float32), "scale floats to 0..255"),
    (np.zeros((8, 8), bool), "convert masks with .astype(np.uint8) * 255"),
    (np.zeros((8, 8), np.uint16), "window 16-bit data"),
])
def test_float_bool_and_16_bit_pictures_get_a_message_about_their_own_dtype(image, hint):
    from medsam_edge.runtime.image import to_rgb

    with pytest.raises(InputError, match=re.escape(f"image dtype {image.dtype}: expected uint8; {hint}")):
        to_rgb(image)
    assert to_rgb(np.zeros((8, 8, 1), np.uint8)).shape == (8, 8, 3)


def test_a_prompts_file_naming_frames_past_the_end_says_so(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"0": [[60, 30, 110, 95]], "3": [[50, 30, 100, 90]], "400": [[1, 1, 30, 30]],
                                   "999": [[1, 1, 30, 30]]}))
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (120, 160), np.uint8))
    r = cli("run", str(tiny_model_dir.path), str(image), "--prompts", str(prompts), "--out", str(tmp_path / "out"),
            "--no-video", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "names frames 3, 400, 999, past the source's last frame 0: those prompts were not used" in r.stderr


def test_a_run_of_only_blank_frames_says_nothing_was_segmented(tiny_model_dir, tmp_path):
    image = tmp_path / "black.png"
    cv2.imwrite(str(image), np.zeros((64, 64), np.uint8))
    r = cli("run", str(tiny_model_dir.path), str(image), "--box", "1,1,30,30", "--out", str(tmp_path / "out"),
            "--no-video", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "no frame was segmented: all 1 frames read were blank" in r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] is True and summary["frames"] == 0 and summary["blank_skipped"] == 1


def test_build_without_tensorrt_says_so_before_asking_for_a_calibration(tiny_model_dir):
    from medsam_edge.engines.tensorrt_status import usable

    if usable()[0]:
        pytest.skip("TensorRT is usable here: build goes on to look for the fp16 encoder")
    r = cli("build", str(tiny_model_dir.path), "--precision", "fp16")
    assert r.returncode == 2
    last = one_line_error(r, "TensorRT is not usable here")
    assert "calibrate" not in last
