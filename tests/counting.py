"""A Segmenter over the tiny model whose backend records how many prompts each decoder call
carried: the real onnxruntime backend, counted, not replaced."""

from __future__ import annotations


def counting_segmenter(md):
    """(Segmenter over `md`, the list each decoder call appends its prompt count to)."""
    from medsam_edge.engines.onnxruntime_backend import OnnxruntimeBackend
    from medsam_edge.runtime.segmenter import Segmenter

    calls: list[int] = []

    class Counting(OnnxruntimeBackend):
        def decode(self, embedding, coords, labels):
            calls.append(len(coords))
            return super().decode(embedding, coords, labels)

    return Segmenter(Counting(md.onnx("encoder"), md.onnx("decoder")), md.preprocess), calls
