"""Memory per prompt: a frame with many boxes costs a bounded amount, whatever the count.

Measured in a subprocess of its own (ru_maxrss and RSS are the whole process's), on the
tiny model, whose decoder is SAM's full-size mask decoder (~28 MB of intermediates per
prompt in one call).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from medsam_edge.errors import InputError


def _measure(script: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


PRELUDE = r"""
    import json, re, numpy as np
    def rss_mb():
        return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
    def peak_mb():
        status = open('/proc/self/status').read()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    def reset_peak():
        with open('/proc/self/clear_refs', 'w') as f:  # "5": the peak RSS starts again from now
            f.write("5")
"""


def test_decoder_memory_does_not_grow_with_each_new_prompt_count(tiny_model_dir):
    # onnxruntime's memory pattern is planned and kept per input shape: with it, decoding
    # 4, 4, 2, 4 prompts held the first call's memory twice over.
    out = _measure(PRELUDE + f"""
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    b = OnnxruntimeBackend(None, {str(tiny_model_dir.onnx("decoder"))!r})
    emb = np.random.default_rng(0).random((1, 256, 64, 64), np.float32)
    def decode(n):
        coords = np.tile(np.asarray([[[100, 100], [600, 600]]], np.float32), (n, 1, 1))
        b.decode(emb, coords, np.tile(np.asarray([[2, 3]], np.float32), (n, 1)))
    base = rss_mb()
    decode(4)
    first = rss_mb()
    for n in (4, 2, 4, 3):
        decode(n)
    print(json.dumps({{"first": first - base, "after": rss_mb() - first}}))
    """)
    assert out["first"] > 40, out  # the call did allocate (the measurement can see it)
    assert out["after"] < 0.3 * out["first"], out


def test_many_prompts_on_one_frame_cost_bounded_memory(tiny_model_dir):
    out = _measure(PRELUDE + f"""
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    from medsam_edge.runtime.segmenter import Segmenter
    from medsam_edge.manifest import load_model_dir
    md = load_model_dir({str(tiny_model_dir.path)!r})
    seg = Segmenter(OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder")), md.preprocess)
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)
    enc = seg.encode(image)
    box = [[10, 10, 100, 100]]
    seg.decode(enc, box)
    reset_peak()
    one = peak_mb()
    masks, scores, _ = seg.decode(enc, box * 13)
    print(json.dumps({{"one": one, "thirteen": peak_mb(), "n": len(masks)}}))
    """)
    assert out["n"] == 13
    # 13 prompts in one decoder call held ~360 MB more than one prompt; in calls of
    # CPU_DECODER_BATCH, a few prompts' worth.
    assert out["thirteen"] - out["one"] < 150, out


def test_cpu_decoder_calls_hold_at_most_cpu_prompts(tiny_model_dir):
    from counting import counting_segmenter
    from medsam_edge.runtime.segmenter import CPU_DECODER_BATCH

    seg, calls = counting_segmenter(tiny_model_dir)
    enc = seg.encode(__import__("numpy").full((64, 64, 3), 100, "uint8"))
    masks, _, _ = seg.decode(enc, [[5, 5, 40, 40]] * (2 * CPU_DECODER_BATCH + 1))
    assert calls == [CPU_DECODER_BATCH, CPU_DECODER_BATCH, 1] and len(masks) == 2 * CPU_DECODER_BATCH + 1


def test_prompts_per_frame_are_capped_with_one_line():
    import pytest

    from medsam_edge.runtime.prompts import MAX_OBJECTS_PER_FRAME, Prompt, validate_prompts

    assert len(validate_prompts([Prompt.of([1, 1, 9, 9])] * MAX_OBJECTS_PER_FRAME, 20, 20)) == MAX_OBJECTS_PER_FRAME
    with pytest.raises(InputError, match=f"at most {MAX_OBJECTS_PER_FRAME}") as e:
        validate_prompts([Prompt.of([1, 1, 9, 9])] * (MAX_OBJECTS_PER_FRAME + 1), 20, 20)
    assert "\n" not in str(e.value)
