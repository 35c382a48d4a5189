"""What the client and the server's stream model agree on, beyond the tensor contract.

The stream model (the one a client names in `triton://host:port/MODEL`) keeps each
stream's embeddings on the server. A request carries `stream_id` and one of:
- encode: `image` (1, 3, S, S) float32 -> `generation` (1,) uint64, the embedding's name;
- decode: `of_generation` (1,) uint64 + the contract's `point_coords` / `point_labels`
  -> `low_res_logits` (N, 1, 256, 256) float32 and `iou` (N, 1) float32;
- release: `release` (1,) bool: forget the stream (a closing client frees its memory).
A decode never carries the image or the 4 MiB embedding.

An embedding the server no longer holds (evicted by a newer stream or a newer encode of
the same stream, released, idle too long, or the server restarted) is answered with an
error whose message starts with EXPIRED; the client maps it to ExpiredEmbedding and the
runtime encodes the frame again. Pure standard library: both sides import it.
"""

from __future__ import annotations

STREAM_ID = "stream_id"
GENERATION = "generation"
OF_GENERATION = "of_generation"
RELEASE = "release"

EXPIRED = "medsam-edge: expired embedding"

# Model names in a repository written for the model named NAME.
ENCODER_SUFFIX = "_encoder"
DECODER_SUFFIX = "_decoder"
DEFAULT_NAME = "medsam"

# Per-stream memory on the server: one FP32 (1, 256, 64, 64) embedding.
EMBEDDING_BYTES = 256 * 64 * 64 * 4

# Defaults of the stream model's cache (config.pbtxt parameters; `medsam-edge triton` options).
MAX_STREAMS = 32
SLOTS_PER_STREAM = 2
STREAM_IDLE_S = 300
WORKERS = 8


def expired_message(stream_id: int, generation: int, why: str) -> str:
    return (f"{EXPIRED}: stream {stream_id} generation {generation} is not on this server ({why}); "
            "encode the frame again")


def is_expired(message: str) -> bool:
    return EXPIRED in (message or "")


def server_memory_bytes(max_streams: int, slots: int) -> int:
    """Most bytes the stream model's cache holds: every stream full."""
    return max_streams * slots * EMBEDDING_BYTES
