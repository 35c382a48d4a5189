"""`medsam-edge triton`: a Triton Inference Server model repository from a model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsam_edge.engines import triton_protocol as P


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton",
        help="write a Triton Inference Server model repository (embeddings kept per stream on the server)",
        description=(
            "Write a model repository for Triton Inference Server. The stream model (Python backend) keeps "
            "each client's embeddings on the server, so decoder-only requests carry prompts, not the image "
            "or the embedding. --platform onnxruntime / tensorrt add encoder and decoder models for NVIDIA's "
            "Triton container; --platform python runs the ONNX through onnxruntime inside the stream model "
            "(CPU servers, the tritonserver in the nvidia-pytriton wheel). Clients: --backend triton://HOST:PORT."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="directory written by `medsam-edge export`")
    p.add_argument("--out", type=Path, required=True, metavar="REPO", help="model repository to write")
    p.add_argument("--platform", default="python", choices=("onnxruntime", "tensorrt", "python"),
                   help="how the encoder and decoder run on the server (default python)")
    p.add_argument("--precision", default="fp32", help="fp32, fp16, int8 (int8dyn: python only; default fp32)")
    p.add_argument("--instances", type=int, default=1,
                   help="encoder/decoder model instances (python: encodes run at once; default 1)")
    p.add_argument("--name", default=P.DEFAULT_NAME, help=f"stream model name (default {P.DEFAULT_NAME})")
    p.add_argument("--version", type=int, default=1, help="model version directory (default 1)")
    p.add_argument("--max-streams", type=int, default=P.MAX_STREAMS,
                   help=f"streams the server keeps embeddings for; more evict the least recent (default {P.MAX_STREAMS})")
    p.add_argument("--slots", type=int, default=P.SLOTS_PER_STREAM,
                   help=f"embeddings kept per stream (default {P.SLOTS_PER_STREAM}: real-time mode decodes one "
                        "while the next is encoded)")
    p.add_argument("--idle", type=float, default=P.STREAM_IDLE_S, metavar="SECONDS",
                   help=f"a stream idle this long is dropped (default {P.STREAM_IDLE_S})")
    p.add_argument("--threads", type=int, help="python platform: onnxruntime threads (default: every core)")
    p.add_argument("--engines", type=Path, help="tensorrt: the engine set directory (default: the only one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing REPO")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medsam_edge.contract import parse_precisions
    from medsam_edge.errors import InputError
    from medsam_edge.manifest import load_model_dir
    from medsam_edge.serving.repository import write_repository

    md = load_model_dir(args.model_dir)
    precision = parse_precisions(args.precision)
    if len(precision) != 1:
        raise InputError(f"--precision {args.precision!r}: one precision per repository")
    out = write_repository(md, args.out, args.platform, precision[0], args.instances, args.name, args.version,
                           args.max_streams, args.slots, args.idle, args.threads, args.engines, args.overwrite)
    mib = P.server_memory_bytes(args.max_streams, args.slots) / 2**20
    print(f"wrote {out}: stream model {args.name!r} ({args.platform}, {precision[0]}), at most {args.max_streams} "
          f"streams x {args.slots} embeddings = {mib:.0f} MiB on the server")
    return 0
