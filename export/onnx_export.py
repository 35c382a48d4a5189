"""Trace the export wrappers to ONNX files that follow the tensor contract."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from medsam_edge.atomic import atomic_path
from medsam_edge.contract import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    EMBED_DIM,
    EMBED_HW,
    ENCODER_OUTPUTS,
    POINT_COORDS,
    POINT_LABELS,
    encoder_inputs,
    prompt_tokens,
)
from medsam_edge.export.graph_fixes import layernorm2d_as_layernorm, reorder_gelu
from medsam_edge.export.wrappers import DecoderForExport, EncoderForExport

OPSET = 18
# Upper bounds of the dynamic axes in the traced graph (not runtime limits in onnxruntime).
_MAX_TRACE_PROMPTS = 256
_MAX_TRACE_POINTS = 64


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter narrates every pass on stdout and warns about internals we don't control."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _save(program, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        program.save(str(tmp))
        # In place on the saved file: the exported models stay well under protobuf's 2 GB.
        model = onnx.load(str(tmp))
        # Both rewrites, always (no short-circuit): each returns how many it changed.
        if sum([reorder_gelu(model), layernorm2d_as_layernorm(model)]):
            onnx.save(model, str(tmp))


@torch.no_grad()
def export_encoder(sam: torch.nn.Module, size: int, dest: str | os.PathLike) -> None:
    (spec,) = encoder_inputs(size)
    image = torch.zeros(spec.shape, dtype=torch.float32)
    with _quiet_exporter():
        program = torch.onnx.export(
            EncoderForExport(sam).eval(),
            (image,),
            input_names=[spec.name],
            output_names=[o.name for o in ENCODER_OUTPUTS],
            opset_version=OPSET,
            dynamo=True,
        )
    _save(program, Path(dest))


@torch.no_grad()
def export_decoder(sam: torch.nn.Module, dest: str | os.PathLike, fast: bool = True) -> None:
    """fast: the decoder spelled by export.decoder_fast (False: segment-anything's MaskDecoder as is)."""
    embedding = torch.zeros(1, EMBED_DIM, EMBED_HW, EMBED_HW)
    # Two prompts of three tokens (a click and a box; a click, a negative click and padding),
    # so the tracer specialises neither axis and every label takes part.
    tokens = [prompt_tokens([10.0, 20.0, 200.0, 220.0], [[90.0, 100.0]], [1]),
              prompt_tokens(None, [[60.0, 70.0], [100.0, 120.0]], [1, 0])]
    coords = torch.from_numpy(np.stack([c for c, _ in tokens]))
    labels = torch.from_numpy(np.stack([lab for _, lab in tokens]))
    prompts = torch.export.Dim(DECODER_OUTPUTS[0].shape[0], min=1, max=_MAX_TRACE_PROMPTS)
    points = torch.export.Dim(DECODER_INPUTS[1].shape[1], min=1, max=_MAX_TRACE_POINTS)
    with _quiet_exporter():
        program = torch.onnx.export(
            DecoderForExport(sam, fast=fast).eval(),
            (embedding, coords, labels),
            input_names=[i.name for i in DECODER_INPUTS],
            output_names=[o.name for o in DECODER_OUTPUTS],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes={DECODER_INPUTS[0].name: None, POINT_COORDS: {0: prompts, 1: points},
                            POINT_LABELS: {0: prompts, 1: points}},
        )
    _save(program, Path(dest))
