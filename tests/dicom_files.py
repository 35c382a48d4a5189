"""DICOM files the tests make: a multi-frame ultrasound cine with two regions of different
spacing over an M-mode strip, files without spacing, a volume with a Frame of Reference
and plane positions, a cine with one corrupt frame, files without identifiers. Each
carries a patient name and ID that must never reach a log."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

def bundled(name: str) -> str:
    """The path of a file bundled with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)  # never reach for the network
    assert path is not None, f"{name} is not bundled with this pydicom"
    return str(path)


SECRET_NAME = "Doe^Secretia"
SECRET_ID = "PID-SECRET-4711"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
ENHANCED_US_VOLUME = "1.2.840.10008.5.1.4.1.1.6.2"
ROWS, COLS = 120, 160
# Two 2D regions side by side with different calibrations over an M-mode strip (x: seconds).
REGIONS = (
    dict(x=(0, 79), y=(0, 59), fmt=1, units=(3, 3), delta=(0.01, 0.01)),     # 0.1 mm square pixels
    dict(x=(80, 159), y=(0, 59), fmt=1, units=(3, 3), delta=(0.02, 0.03)),   # 0.2 mm wide, 0.3 mm high
    dict(x=(0, 159), y=(60, 119), fmt=2, units=(4, 3), delta=(0.005, 0.01)),  # M-mode: seconds x cm
)


def _region(x, y, fmt, units, delta) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = fmt, 1, 0
    item.RegionLocationMinX0, item.RegionLocationMaxX1 = x
    item.RegionLocationMinY0, item.RegionLocationMaxY1 = y
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta
    return item


def _pictures(frames: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    pictures = rng.integers(20, 90, (frames, ROWS, COLS), dtype=np.uint8)
    for i in range(frames):  # a bright disk that moves, so no frame is blank
        yy, xx = np.ogrid[:ROWS, :COLS]
        pictures[i][(yy - 40) ** 2 + (xx - 50 - 4 * i) ** 2 < 15 ** 2] = 220
    return pictures


def make_dicom(path, *, frames: int = 4, sop_class: str = US_MULTIFRAME, regions=REGIONS,
               frame_of_reference: bool = False, positions: bool = False, pixel_spacing=None,
               drop: tuple[str, ...] = (), corrupt_frame: int | None = None):
    """A small 8-bit greyscale DICOM with a patient name and ID that must never be logged."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = SECRET_NAME, SECRET_ID, "19700101", "F"
    ds.AccessionNumber, ds.StudyID, ds.Modality = "ACC-SECRET-9", "1", "US"
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "120000", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames, ds.FrameTime = frames, 40.0
    if regions:
        ds.SequenceOfUltrasoundRegions = [_region(**r) for r in regions]
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    if frame_of_reference:
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = generate_uid(), ""
    if positions:
        shared = Dataset()
        orientation, measures = Dataset(), Dataset()
        orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 1.0
        shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        per_frame = []
        for i in range(frames):
            item, position = Dataset(), Dataset()
            position.ImagePositionPatient = [0.0, 0.0, 2.0 * i]
            item.PlanePositionSequence = [position]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = per_frame
    pictures = _pictures(frames)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = pictures.tobytes()
    if corrupt_frame is not None:
        from pydicom.encaps import encapsulate, generate_frames

        ds.compress(RLELossless, pictures if frames > 1 else pictures[0])
        parts = list(generate_frames(ds.PixelData, number_of_frames=frames))
        parts[corrupt_frame] = b"\x00" * 8  # an RLE header that promises no segments
        ds.PixelData = encapsulate(parts)
    for keyword in drop:
        delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)
    return path, pictures


def hand_area(mask: np.ndarray) -> float | None:
    """REGIONS by hand: 0.1 x 0.1 mm left of x=80, 0.3 x 0.2 mm right of it (y < 60)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0.0
    if ys.max() > 59:
        return None  # touches the M-mode strip
    if xs.max() <= 79:
        return pytest.approx(ys.size * 0.01, abs=1e-4)
    return pytest.approx(ys.size * 0.06, abs=1e-4) if xs.min() >= 80 else None
