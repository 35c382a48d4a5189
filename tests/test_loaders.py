"""Opening backends: engines.loaders.open_files (the one opener of ONNX files) and a
Predictor over a backend its caller opened."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_edge.errors import InputError


def test_open_files_opens_what_it_is_given_and_says_what(tiny_model_dir):
    from medsam_edge.engines.loaders import open_files
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend

    md = tiny_model_dir
    enc = open_files(md.onnx("encoder"), threads=1)
    dec = open_files(decoder=md.onnx("decoder"), threads=1)
    assert enc.paths == {"encoder": md.onnx("encoder")} and dec.paths == {"decoder": md.onnx("decoder")}
    # Working memory goes back after each call for a 1024-px encoder unless the caller says otherwise.
    assert enc.releases_memory and not dec.releases_memory
    assert not open_files(md.onnx("encoder"), release_memory=False).releases_memory
    with pytest.raises(ValueError, match="OpenVINO compiles an encoder and a decoder"):
        open_files(md.onnx("encoder"), None, "openvino-cpu")
    with pytest.raises(InputError, match="backend 'tensorrt' does not open ONNX files"):
        open_files(md.onnx("encoder"), md.onnx("decoder"), "tensorrt")
    # The backend name is a keyword: given where the precision goes, it is refused, not taken for one.
    with pytest.raises(ValueError, match="name is one of"):
        OnnxruntimeBackend(md.onnx("encoder"), md.onnx("decoder"), "onnxruntime-cpu")


def test_a_predictor_over_an_open_backend_leaves_it_to_the_caller(tiny_model_dir, echo_frames):
    """Predictor(model_dir, backend=<open Backend>): the same masks as one that opens its own,
    both modes on that backend as it is, and closing the predictor does not close it."""
    from medsam_edge.engines.base import Backend
    from medsam_edge.engines.loaders import open_files
    from medsam_edge.runtime import Predictor

    class Watched(Backend):
        def __init__(self, inner):
            self.inner, self.name, self.closed = inner, inner.name, 0

        def encode(self, image):
            return self.inner.encode(image)

        def decode(self, embedding, coords, labels):
            return self.inner.decode(embedding, coords, labels)

        def close(self):
            self.closed += 1

    md, box = tiny_model_dir, [[160, 60, 210, 125]]
    backend = Watched(open_files(md.onnx("encoder"), md.onnx("decoder"), threads=1))
    with Predictor(md, backend=backend) as p:
        p.set_image(echo_frames[0])
        masks, _ = p.predict(boxes=box)
        results = list(p.stream(echo_frames[:2], prompts=box, realtime=True))
        assert p.backend is backend and len(results) == 2
    assert backend.closed == 0
    with Predictor(md, backend="onnxruntime-cpu", threads=1) as own:
        own.set_image(echo_frames[0])
        want, _ = own.predict(boxes=box)
    np.testing.assert_array_equal(masks, want)
