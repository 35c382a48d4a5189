"""DICOM Segmentation output: one binary Segmentation instance per run of a DICOM source.

Segments: one per prompt position (segment n is prompt n-1 of every frame, as the NPZ and
PNG sinks number them), labelled "prompt k" or "track k", with the algorithm that made it
(medsam-edge version, model id, checkpoint SHA-256, precision, backend) and the first box
it was prompted with. Frames: every source frame that was segmented with at least one
prompt carries every segment (a segment without a prompt on that frame is empty there,
like the NPZ's padding), each frame referencing its source frame by number. Frames that
were skipped (bad, blank, dropped) or had no prompt are left out: absent, not empty.

Which writer builds it (`DicomSegSink.writer`, also logged):
- highdicom, for single-frame sources (with or without a Frame of Reference) and for
  multi-frame sources in a patient coordinate system whose frames have distinct positions;
- pydicom following the IOD (dicom_seg_iod.py), for multi-frame sources highdicom 0.28
  refuses: no Frame of Reference or no plane positions (most ultrasound cines, pydicom's
  examples_ybr_color.dcm), or frames sharing one position. It reads back with highdicom's
  reader. A source highdicom rejects for any other reason (a SOP class its tables lack)
  also goes this way, and the log says so, by exception type only.

Privacy: the object carries the source's patient and study identifiers (the standard
requires them). They are copied from a header this module re-reads itself, with pydicom's
and highdicom's loggers muted and their warnings caught (both quote header values), and
nothing from the header is ever logged. Written at close(), atomically: a failed or killed
run leaves no file under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsam_edge import __version__, atomic
from medsam_edge.errors import InputError

from .result import FrameResult
from .sinks import Sink

if TYPE_CHECKING:  # pydicom and highdicom load when a sink is made, not for `--help`
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

SEG_FILE = "segmentation.dcm"
# The identifiers a Segmentation must reference its source by.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Rows", "Columns")
LABEL_PREFIX = {False: "prompt", True: "track"}


@dataclass(frozen=True)
class Algorithm:
    """What made the masks, for the Segmentation Algorithm Identification of each segment."""

    model_id: str
    checkpoint_sha256: str
    precision: str
    backend: str
    version: str = __version__

    @classmethod
    def from_run(cls, model_dir, described: dict) -> Algorithm:
        """model_dir: a manifest.ModelDir; described: the backend's describe()."""
        checkpoint = model_dir.manifest.get("checkpoint") or {}
        return cls(model_dir.model_id, str(checkpoint.get("sha256") or "unknown"),
                   str(described.get("precision", "")), str(described.get("backend", "")))

    @property
    def name(self) -> str:
        return f"medsam-edge {self.model_id}"

    def parameters(self) -> dict[str, str]:
        return {"model_id": self.model_id, "checkpoint_sha256": self.checkpoint_sha256,
                "precision": self.precision, "backend": self.backend}

    def equipment(self) -> dict[str, str]:
        # Enhanced General Equipment needs a device serial number; software has none, so
        # the weights it runs stand for it (no host name: that can name a site).
        return {"Manufacturer": "medsam-edge", "ManufacturerModelName": self.model_id,
                "DeviceSerialNumber": self.checkpoint_sha256[:16], "SoftwareVersions": self.version}


@contextlib.contextmanager
def quiet_dicom_libraries() -> Iterator[list]:
    """Mute pydicom's and highdicom's loggers and catch their warnings while a header is
    read or written: both quote header values (a malformed PatientName, a SOP Instance UID)."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)  # child loggers inherit it; `disabled` they would not
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def read_source_header(path: str | os.PathLike) -> Dataset:
    """The source's header (no pixels), checked for what a Segmentation must reference."""
    from .sources.dicom import read_dataset

    with quiet_dicom_libraries():
        header = read_dataset(Path(path), stop_before_pixels=True)
    missing = [k for k in REQUIRED if not header.get(k)]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} in the header, which a DICOM Segmentation must "
                         "reference its source by; run without --dicom-seg, or give the file its identifiers")
    return header


def choose_writer(header: Dataset) -> tuple[str, str]:
    """("highdicom" or "pydicom", why) for a source header; see the module docstring."""
    from highdicom.spatial import get_image_coordinate_system

    frames = int(header.get("NumberOfFrames") or 1)
    if frames == 1:
        return "highdicom", "single-frame source"
    if "FrameOfReferenceUID" not in header:
        return "pydicom", "multi-frame source without a Frame of Reference"
    if get_image_coordinate_system(header) is None:
        return "pydicom", "multi-frame source with a Frame of Reference but no plane positions"
    positions = _frame_positions(header)
    if positions is None or len({tuple(p) for p in positions}) != frames:
        return "pydicom", "multi-frame source whose frames share positions or lack them"
    return "highdicom", "multi-frame source in a patient coordinate system"


def _frame_positions(header: Dataset) -> list[tuple[float, ...]] | None:
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    shared = header.get("SharedFunctionalGroupsSequence")
    if not per_frame or not shared or "PlaneOrientationSequence" not in shared[0]:
        return None
    try:
        return [tuple(round(float(v), 4) for v in item.PlanePositionSequence[0].ImagePositionPatient)
                for item in per_frame]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


class DicomSegSink(Sink):
    """Collects masks per source frame; writes `path` at close(). See the module docstring.

    source_path: the DICOM file the frames came from (re-read here for its identifiers).
    sop_instance_uid: the UID the source read when it opened the file (DicomGeometry), so a
        file replaced since is refused rather than referenced wrongly.
    tracked: segments are labelled "track k" instead of "prompt k".
    """

    def __init__(self, path: str | os.PathLike, source_path: str | os.PathLike, algorithm: Algorithm, *,
                 sop_instance_uid: str | None = None, tracked: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.source_path = Path(source_path)
        self.algorithm = algorithm
        self.tracked = tracked
        self._header = read_source_header(self.source_path)
        if sop_instance_uid is not None and str(self._header.SOPInstanceUID) != sop_instance_uid:
            raise InputError(f"{self.source_path}: the file changed since it was opened (another SOP Instance "
                             "UID); run again on a file that stays put")
        self.rows, self.columns = int(self._header.Rows), int(self._header.Columns)
        self.source_frames = int(self._header.get("NumberOfFrames") or 1)
        self.writer, self.reason = choose_writer(self._header)
        log.info("%s: DICOM Segmentation will be written with %s (%s)", self.path, self.writer, self.reason)
        self._frames: dict[int, tuple[int, np.ndarray]] = {}  # frame number -> (prompts, packed masks)
        self._first_box: dict[int, tuple[int, tuple[float, ...]]] = {}
        self._overlap = False
        self._repeats = 0

    def _write(self, result: FrameResult) -> None:
        masks = np.asarray(result.masks, bool)
        count = int(masks.shape[0]) if masks.ndim == 3 else 0
        if count == 0:
            return  # no prompt, nothing segmented: the frame stays out
        if masks.shape[1:] != (self.rows, self.columns):
            raise InputError(f"{self.path}: frame {result.frame.index} masks are {masks.shape[2]}x{masks.shape[1]} "
                             f"but the source is {self.columns}x{self.rows}; a Segmentation needs the source's size")
        number = int(result.frame.meta.get("position", result.frame.index)) + 1
        if not 1 <= number <= self.source_frames:
            raise InputError(f"{self.path}: frame {result.frame.index} is not one of the source's "
                             f"{self.source_frames} frames; a Segmentation references frames of its source")
        if number in self._frames:
            self._repeats += 1  # a looped pass: the first pass's masks stand
            if self._repeats == 1:
                log.warning("%s: source frame %d came again (looped input); the Segmentation keeps the first "
                            "pass's masks", self.path, number)
            return
        self._frames[number] = (count, np.packbits(masks.reshape(count, -1), axis=-1, bitorder="little"))
        self._overlap = self._overlap or (count > 1 and bool((masks.sum(axis=0) > 1).any()))
        for k, box in enumerate(np.asarray(result.boxes, np.float64).reshape(-1, 4)[:count]):
            self._first_box.setdefault(k, (number, tuple(float(v) for v in box)))

    def _mask(self, number: int, segment: int) -> np.ndarray:
        count, packed = self._frames[number]
        if segment >= count:
            return np.zeros((self.rows, self.columns), bool)
        bits = np.unpackbits(packed[segment], count=self.rows * self.columns, bitorder="little")
        return bits.reshape(self.rows, self.columns).astype(bool)

    def _finish(self) -> None:
        if not self._frames:
            log.warning("%s: no frame was segmented with a prompt, so no DICOM Segmentation is written", self.path)
            return
        numbers = sorted(self._frames)
        segments = max(count for count, _ in self._frames.values())
        with quiet_dicom_libraries():
            descriptions = [self._description(k) for k in range(segments)]
            ds = None
            if self.writer == "highdicom":
                try:
                    ds = self._with_highdicom(numbers, descriptions)
                except (ValueError, KeyError, AttributeError, TypeError) as exc:
                    # The message may quote the header: the type only.
                    self.writer, self.reason = "pydicom", f"highdicom refused it ({type(exc).__name__})"
            if ds is None:
                ds = self._with_pydicom(numbers, descriptions)
            with atomic.atomic_path(self.path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        self._outputs.append(self.path)
        log.info("%s: DICOM Segmentation, %d segment(s) x %d frame(s), written with %s (%s)",
                 self.path, segments, len(numbers), self.writer, self.reason)

    def _description(self, k: int) -> Dataset:
        import highdicom as hd
        from pydicom.sr.codedict import codes

        algorithm = hd.AlgorithmIdentificationSequence(
            name=self.algorithm.name, family=codes.cid7162.ArtificialIntelligence, version=self.algorithm.version,
            source="medsam-edge", parameters=self.algorithm.parameters())
        label = f"{LABEL_PREFIX[self.tracked]} {k}"
        # What the user pointed at is unknown to the model: the generic "Tissue" code.
        item = hd.seg.SegmentDescription(
            segment_number=k + 1, segment_label=label, segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type="SEMIAUTOMATIC",
            algorithm_identification=algorithm)
        if k in self._first_box:
            number, box = self._first_box[k]
            verb = "tracked from" if self.tracked else "prompted by"
            item.SegmentDescription = f"{verb} box {','.join(f'{v:g}' for v in box)} on frame {number}"
        return item

    def _with_highdicom(self, numbers: list[int], descriptions: list[Dataset]) -> Dataset:
        import highdicom as hd
        from highdicom.utils import get_plane_positions_of_image
        from pydicom.uid import generate_uid

        from .dicom_seg_iod import add_patient_orientation

        array = np.zeros((len(numbers), self.rows, self.columns, len(descriptions)), bool)
        for i, number in enumerate(numbers):
            for k in range(len(descriptions)):
                array[i, :, :, k] = self._mask(number, k)
        positions = None
        if self.source_frames > 1:
            everywhere = get_plane_positions_of_image(self._header)
            positions = [everywhere[n - 1] for n in numbers]
        equipment = self.algorithm.equipment()
        seg = hd.seg.Segmentation(
            source_images=[self._header], pixel_array=array, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=1,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=equipment["Manufacturer"],
            manufacturer_model_name=equipment["ManufacturerModelName"],
            software_versions=equipment["SoftwareVersions"], device_serial_number=equipment["DeviceSerialNumber"],
            plane_positions=positions, omit_empty_frames=False, content_label="MEDSAM_EDGE",
            content_description=self._content_description(), series_description="medsam-edge segmentation")
        add_patient_orientation(self._header, seg)
        return seg

    def _with_pydicom(self, numbers: list[int], descriptions: list[Dataset]) -> Dataset:
        from pydicom.uid import generate_uid

        from .dicom_seg_iod import build_segmentation, pack_frames

        frames = (self._mask(n, k) for k in range(len(descriptions)) for n in numbers)
        return build_segmentation(
            self._header, numbers, descriptions, pack_frames(frames), series_uid=generate_uid(),
            sop_uid=generate_uid(), equipment=self.algorithm.equipment(), overlap=self._overlap,
            content_description=self._content_description())

    def _content_description(self) -> str:
        a = self.algorithm
        return f"{a.name} {a.precision} on {a.backend}, medsam-edge {a.version}"[:64]


def dicom_seg_sink(source, out_dir: str | os.PathLike, model_dir, described: dict, *,
                   tracked: bool = False) -> DicomSegSink:
    """The sink for `--dicom-seg`: `out_dir/segmentation.dcm` for a DICOM `source`.

    source: the opened Source (must be a DicomSource, not looping); model_dir: ModelDir;
    described: backend.describe(). Raises InputError with one line otherwise.
    """
    geometry = getattr(source, "geometry", None)
    path = getattr(source, "path", None)
    if geometry is None or path is None:
        raise InputError(f"--dicom-seg needs a DICOM source (a Segmentation references its source instance); "
                         f"{getattr(source, 'description', source)} is not one")
    if getattr(source, "loop", False):
        raise InputError("--dicom-seg with --loop: a Segmentation holds each source frame once; drop --loop")
    return DicomSegSink(Path(out_dir) / SEG_FILE, path, Algorithm.from_run(model_dir, described),
                        sop_instance_uid=geometry.sop_instance_uid, tracked=tracked)
