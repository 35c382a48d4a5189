"""What a DICOM file's encapsulated (compressed) pixel data holds, read from its item
structure without decoding anything: how many fragments there are, and which frames'
codestreams end as they should.

Two damaged-file cases are caught here, before a decoder sees them:
- a NumberOfFrames larger than the fragments (every frame needs at least one): a header
  saying 10^9 frames over 30 fragments would otherwise be read frame by frame for ever;
- a frame cut short: JPEG, JPEG-LS and JPEG 2000 codestreams end with the marker FF D9
  (EOI / EOC), followed by at most one padding byte to the item's even length. Some
  decoders return a cut frame partly grey without an error; it is a bad frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD
_END_MARKER = b"\xff\xd9"
# High-throughput JPEG 2000 (HTJ2K) codestreams end with EOC too.
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")


def has_end_marker(syntax: UID) -> bool:
    """True for the transfer syntaxes whose codestreams end with FF D9."""
    return syntax in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes, *_HTJ2K)


@dataclass(frozen=True)
class Fragments:
    """offsets: the Basic Offset Table (empty if the file has none), one entry per frame;
    spans: (start, end) of each fragment's data in the pixel data buffer."""

    offsets: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]

    def last_fragment_of_each_frame(self, frames: int) -> list[int] | None:
        """Index into `spans` of each frame's last fragment; None where the structure does
        not say (several fragments per frame and no offset table)."""
        n = len(self.spans)
        if self.offsets and len(self.offsets) == frames:
            # An offset is measured from the first fragment's item tag (8 bytes before its data).
            first = self.spans[0][0] - 8 if self.spans else 0
            starts = [s - 8 - first for s, _ in self.spans]
            ends = list(self.offsets[1:]) + [float("inf")]
            last = [max((k for k in range(n) if starts[k] < end), default=-1) for end in ends]
            return last if all(k >= 0 for k in last) else None  # an offset table that points nowhere
        if n == frames:
            return list(range(n))
        if frames == 1:
            return [n - 1]
        return None


def read_fragments(pixel_data: bytes) -> Fragments:
    """The item structure of encapsulated pixel data; stops quietly where it breaks off
    (a truncated file keeps the fragments before the break)."""
    pos, total = 0, len(pixel_data)
    offsets: tuple[int, ...] = ()
    spans: list[tuple[int, int]] = []
    first = True
    while pos + 8 <= total:
        group, element, length = struct.unpack_from("<HHI", pixel_data, pos)
        tag = group << 16 | element
        if tag != _ITEM:
            break  # the sequence delimiter, or damage: nothing further is a fragment
        start, end = pos + 8, min(pos + 8 + length, total)
        if first:
            count = (end - start) // 4
            offsets = struct.unpack_from(f"<{count}I", pixel_data, start) if count else ()
            first = False
        else:
            spans.append((start, end))
        pos = pos + 8 + length
    return Fragments(tuple(offsets), tuple(spans))


def ends_whole(pixel_data: bytes, span: tuple[int, int]) -> bool:
    """True if the fragment's data ends with FF D9, allowing one padding byte after it."""
    start, end = span
    tail = pixel_data[max(start, end - 3):end]
    return tail.endswith(_END_MARKER) or tail[:-1].endswith(_END_MARKER)
