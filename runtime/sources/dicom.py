"""DICOM source: single images and multi-frame cine loops, decoded by pydicom 3.

How stored pixels become an 8-bit RGB frame, in one place so every DICOM looks alike:
- YBR_FULL, YBR_FULL_422 and the JPEG 2000 YBR_RCT/YBR_ICT are decoded with
  as_rgb=True (pydicom 3's default, asked for explicitly). The decoder reports the
  photometric interpretation it returns; anything still YBR is converted here.
- PALETTE COLOR: the palette LUT is applied; 16-bit LUT entries keep their high byte.
- Greyscale stored in 8 bits is used as is. Greyscale with fewer bits (1-bit masks) is
  scaled to 0..255 by its bit depth. Anything wider goes through the Modality LUT
  (rescale slope/intercept), then the first WindowCenter/WindowWidth pair if the header
  has one (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), else min-max over each
  frame. A VOI LUT Sequence without a window, and per-frame windows of enhanced
  multi-frame objects, are not applied: those frames get min-max.
- MONOCHROME1 is inverted last, so bright means the same in every frame downstream.
- Colour wider than 8 bits is scaled by its BitsStored range (not min-max: keeps hue).

Frame times: FrameTime (0018,1063, ms per frame), else FrameTimeVector (0018,1065,
ms increments), else CineRate or RecommendedDisplayFrameRate (frames/s), else the
frame's position with fps unknown (time_source "index").

Patient data: only the image pixel module, frame timing, transfer syntax and a small
geometry record (`DicomGeometry`: ultrasound regions and pixel spacing as a calibration,
frame count, whether a Frame of Reference exists, the SOP Instance UID so a writer can
check it re-reads the same file) are read. The description is the file path; no header
value reaches a frame, log or error. Writers that must copy identifiers (the DICOM
Segmentation) re-read the file themselves.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder
from pydicom.pixels.utils import get_expected_length

from medsam_edge.errors import InputError
from medsam_edge.runtime.dicom_regions import finite_number, pixel_calibration_from_dataset
from medsam_edge.runtime.spacing import PixelCalibration

from .base import Item, Source, to_uint8
from .encapsulated import ends_whole, has_end_marker, read_fragments

log = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_REQUIRED = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")


def read_dataset(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """dcmread with every failure turned into a one-line InputError naming the file.

    stop_before_pixels: read the header only (a writer that needs the identifiers).
    """
    try:
        # pydicom warns (rather than raises) when a file ends mid-element, and its
        # warnings can quote header values, so they are caught here and never re-shown.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied; check the file's access rights") from None
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no 'DICM' marker after the 128-byte "
                         "preamble); check the file is a DICOM Part 10 file") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt header breaks pydicom many ways
        raise InputError(f"{path}: DICOM header cannot be parsed ({type(exc).__name__}); "
                         "the file is corrupt or truncated: copy it again") from None
    if len(ds) == 0 or any("End of file" in str(w.message) for w in caught):
        raise InputError(f"{path}: the file is truncated (it ends inside a data element); "
                         "copy it again from its source")
    return ds


def frame_times(ds: Dataset, count: int) -> tuple[np.ndarray, float | None, str]:
    """Seconds from the first frame for each frame, the frame rate, and the tag used."""
    positions = np.arange(count, dtype=np.float64)
    frame_ms = _positive(ds.get("FrameTime"))
    if frame_ms:
        return positions * frame_ms / 1000.0, 1000.0 / frame_ms, "FrameTime"
    vector = ds.get("FrameTimeVector")
    if vector is not None:
        increments = np.atleast_1d(np.asarray(vector, dtype=np.float64))
        if len(increments) == count and np.isfinite(increments).all() and (increments >= 0).all():
            # The first increment is 0 by the standard; subtract it anyway so t0 = 0.
            times = (np.cumsum(increments) - increments[0]) / 1000.0
            fps = (count - 1) / times[-1] if count > 1 and times[-1] > 0 else None
            return times, fps, "FrameTimeVector"
        log.debug("FrameTimeVector has %d entries for %d frames; ignored", len(increments), count)
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds.get(keyword))
        if rate:
            return positions / rate, rate, keyword
    return positions, None, "index"


def _positive(value: object) -> float | None:
    number = finite_number(value)
    return number if number is not None and number > 0 else None


def window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2-3) from modality values to uint8."""
    if function == "SIGMOID":
        scaled = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        scaled = (values - center) / width + 0.5
    else:  # LINEAR, the default; width 1 is a threshold at center - 0.5
        scaled = (values - (center - 0.5)) / max(width - 1.0, 1e-3) + 0.5
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _scale_bits(picture: np.ndarray, bits: int) -> np.ndarray:
    top = float(2 ** bits - 1)
    return (np.clip(picture.astype(np.float32) * (255.0 / top), 0, 255) + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class DicomGeometry:
    """What measurements and a Segmentation writer need from the header; no patient data.

    pixel_calibration: mm per pixel (ultrasound regions, PixelSpacing), see runtime.spacing.
    sop_instance_uid: kept out of repr() so no log line can print it by accident.
    """

    rows: int
    columns: int
    frames: int
    has_frame_of_reference: bool
    pixel_calibration: PixelCalibration
    sop_instance_uid: str | None = field(default=None, repr=False)

    @classmethod
    def from_dataset(cls, ds: Dataset, frames: int, name: str) -> DicomGeometry:
        uid = ds.get("SOPInstanceUID")
        return cls(int(ds.Rows), int(ds.Columns), frames, "FrameOfReferenceUID" in ds,
                   pixel_calibration_from_dataset(ds, name), str(uid) if uid else None)


class DicomSource(Source):
    """A DICOM file's frames (one for a single image). Not live; fps from the header."""

    def __init__(self, path: str | os.PathLike[str], *, loop: bool = False) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), loop=loop)
        ds = read_dataset(self.path)
        self._ds: Dataset | None = ds
        if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            sop = str(getattr(ds.get("SOPClassUID"), "name", "") or "")
            if "Image" in sop:  # pydicom reads a file cut between elements without a word
                raise InputError(f"{path}: no Pixel Data (7FE0,0010) in a {sop} object: the "
                                 "file is probably truncated; copy it again from its source")
            kind = f" (SOP class: {sop})" if sop else ""
            raise InputError(f"{path}: no Pixel Data (7FE0,0010){kind}: it holds no image")
        missing = [keyword for keyword in _REQUIRED if keyword not in ds]
        if missing:
            raise InputError(f"{path}: image pixel module lacks {', '.join(missing)}; "
                             "the file holds no displayable image")
        self._decoder = self._find_decoder(ds)
        self.frame_count = self._frames_declared(ds)
        self._cut_frames: frozenset[int] = frozenset()
        self._check_length(ds)
        self.geometry = DicomGeometry.from_dataset(ds, self.frame_count, self.description)
        self._times, self.fps, self.time_source = frame_times(ds, self.frame_count)
        self._window = self._find_window(ds)
        self._check_first_frame()

    def _find_decoder(self, ds: Dataset):  # -> pydicom.pixels.decoders.base.Decoder
        syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
        if syntax is None:
            raise InputError(f"{self.path}: no Transfer Syntax UID (0002,0010) in the file "
                             "meta information; rewrite the file with a DICOM tool")
        named = f"transfer syntax {syntax} ({syntax.name})"
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise InputError(f"{self.path}: {named} cannot be decoded: pydicom has no decoder "
                             "for it; convert the file (e.g. gdcmconv --raw), or for MPEG/H.264/"
                             "HEVC video extract the stream and open it as a video") from None
        if not decoder.is_available:
            # pydicom words them "name - requires pkg>=x"; shown as "name (pkg>=x)".
            hints = "; ".join(d.replace(" - requires ", " (") + ")"
                              for d in decoder.missing_dependencies) or "see pydicom's docs"
            raise InputError(f"{self.path}: {named} cannot be decoded: install a plugin such as "
                             f"{hints}")
        return decoder

    def _frames_declared(self, ds: Dataset) -> int:
        value = ds.get("NumberOfFrames")
        if value is None or str(value).strip() == "":
            return 1  # absent or empty: a single image
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.path}: NumberOfFrames (0028,0008) is not a whole number") from None
        if count < 1:
            raise InputError(f"{self.path}: NumberOfFrames (0028,0008) is {count}: a DICOM image holds at "
                             "least one frame; the header is damaged")
        return count

    def _check_length(self, ds: Dataset) -> None:
        """The header's frame count against the data, before anything is sized by it."""
        if "PixelData" not in ds:
            return
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated:
            self._check_fragments(ds.PixelData, syntax)
            return
        # Native pixel data cut short decodes no frame at all in pydicom; say why upfront.
        have, want = len(ds.PixelData), get_expected_length(ds)
        if have < want:
            raise InputError(f"{self.path}: the file is truncated: pixel data holds {have} of "
                             f"{want} bytes; copy it again from its source")

    def _check_fragments(self, data: bytes, syntax) -> None:
        fragments = read_fragments(data)
        if len(fragments.spans) < self.frame_count:
            raise InputError(
                f"{self.path}: NumberOfFrames (0028,0008) says {self.frame_count} frames but the compressed "
                f"pixel data holds {len(fragments.spans)} fragments (at least one per frame): the header or "
                "the data is damaged; copy the file again from its source")
        last = fragments.last_fragment_of_each_frame(self.frame_count) if has_end_marker(syntax) else None
        if last is not None:
            self._cut_frames = frozenset(i for i, k in enumerate(last) if not ends_whole(data, fragments.spans[k]))

    def _find_window(self, ds: Dataset) -> tuple[float, float, str] | None:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is None or width is None:
            return None
        center = center[0] if isinstance(center, MultiValue) else center
        width = width[0] if isinstance(width, MultiValue) else width
        center_value, width_value = finite_number(center), _positive(width)
        if center_value is None or width_value is None:
            log.debug("%s: unusable window; frames use min-max", self.path)
            return None
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        return center_value, width_value, function

    def _read_pass(self) -> Iterator[Item]:
        for position in range(self.frame_count or 0):
            ds = self._ds
            if ds is None:
                return  # closed while iterating
            stamp = float(self._times[position])
            if position in self._cut_frames:
                yield position, "its compressed data does not end with an end-of-image marker (cut short or damaged)", stamp
                continue
            try:
                picture, meta = self._decoder.as_array(ds, index=position, as_rgb=True)
                picture = self._to_display(ds, picture, meta)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is one bad frame
                yield position, f"cannot decode: {decoder_failure(exc)}", stamp
                continue
            yield position, picture, stamp

    def _to_display(self, ds: Dataset, picture: np.ndarray, meta: dict) -> np.ndarray:
        """Decoded frame -> uint8 grey or RGB per the policy in the module docstring."""
        kind = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))
        bits = int(meta.get("bits_stored", ds.get("BitsStored", 8)))
        if kind == "PALETTE COLOR":
            rgb = apply_color_lut(picture, ds)
            # 16-bit LUT entries are 8-bit values shifted up (0xFF00 is full red), so >> 8.
            return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)
        if kind in ("YBR_FULL", "YBR_FULL_422"):
            picture, kind = convert_color_space(picture, kind, "RGB"), "RGB"
        if picture.ndim == 3:
            return picture if picture.dtype == np.uint8 and bits <= 8 else _scale_bits(picture, bits)
        if picture.dtype == np.uint8 and bits == 8:
            grey = picture
        elif picture.dtype.kind in "ub" and bits < 8 and self._window is None:
            grey = _scale_bits(picture, max(bits, 1))
        else:
            values = apply_modality_lut(picture, ds).astype(np.float64)
            grey = window(values, *self._window) if self._window else to_uint8(values)
        return 255 - grey if kind == "MONOCHROME1" else grey

    def _release(self) -> None:
        self._ds = None  # the whole file lives in memory until then


def decoder_failure(exc: Exception) -> str:
    """pydicom's decoder error as one readable line: it lists each plugin's failure on a
    line of its own after a preamble, some quoting object reprs ("<_io.BytesIO object at
    0x...>"); kept: each plugin's name and first sentence, '; '-separated, 300 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    plugins = [re.sub(r"\s*<[^<>]* at 0x[0-9a-f]+>", "", line) for line in lines[1:]]
    if ":" in (lines[0] if lines else "") and plugins:
        text = "no decoder could read it (" + "; ".join(plugins) + ")"
    else:
        text = re.sub(r"\s*<[^<>]* at 0x[0-9a-f]+>", "", " ".join(lines)) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
