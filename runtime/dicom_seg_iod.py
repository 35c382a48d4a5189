"""A binary DICOM Segmentation built with pydicom, module by module (PS3.3 A.51).

For the sources highdicom 0.28 will not write a Segmentation of: a multi-frame image
without a patient coordinate system (most ultrasound cines: no Frame of Reference, or one
without plane positions) and frames that share one position (a time series). The IOD
allows it: without plane positions "each pixel of the segmentation shall correspond to a
pixel in a referenced image, using the Derivation Image Functional Group" (A.51.5.1), so
every frame here names its source frame by number, with Spatial Locations Preserved YES.

Modules written: Patient, Clinical Trial Subject, General Study, Patient Study, Clinical
Trial Study (copied from the source, as the standard requires), General Series and
Segmentation Series, Frame of Reference (when the source has one), General and Enhanced
General Equipment, General Image, Image Pixel, Segmentation Image, Multi-frame Functional
Groups (per frame: Frame Content, Derivation Image, Segment Identification), Multi-frame
Dimension (segment number, then the source frame number as Temporal Position Index in
Frame Content: index value and attribute value are the same number, as dciodvfy checks) and
Common Instance Reference, SOP Common.

Frame order: segment by segment, source frames ascending within each (as highdicom).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from copy import deepcopy

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid

# Root attributes of the Patient, Clinical Trial Subject, General Study, Patient Study and
# Clinical Trial Study modules (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1, C.7.2.2, C.7.2.3) that a
# derived object carries over from its source.
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "QualityControlSubject", "OtherPatientIDsSequence",
    "OtherPatientNames", "EthnicGroupCodeSequence", "PatientSpeciesDescription", "PatientSpeciesCodeSequence",
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "ProcedureCodeSequence", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "ReferencedStudySequence", "RequestingService",
    "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight", "MedicalAlerts", "Allergies",
    "Occupation", "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "PatientSexNeutered",
    "ReasonForVisit", "AdmissionID",
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "ConsentForClinicalTrialUseSequence",
)
# Type 2 attributes of those modules: present, empty if the source has no value.
PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")

# Tags the Dimension Index Sequence points at.
REFERENCED_SEGMENT_NUMBER = 0x0062000B
SEGMENT_IDENTIFICATION_SEQUENCE = 0x0062000A
TEMPORAL_POSITION_INDEX = 0x00209128
FRAME_CONTENT_SEQUENCE = 0x00209111


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """The source's patient and study attributes onto `target` (copies, not references)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = deepcopy(source[keyword])
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in target:
            setattr(target, keyword, "")


def add_patient_orientation(source: Dataset, target: Dataset) -> None:
    """General Image's Patient Orientation (type 2C: required where no plane orientation
    places the frames), the source's value or empty. highdicom 0.28 leaves it out."""
    shared = target.get("SharedFunctionalGroupsSequence")
    if shared and "PlaneOrientationSequence" in shared[0]:
        return
    target.PatientOrientation = deepcopy(source.PatientOrientation) if "PatientOrientation" in source else ""


def pack_frames(frames: Iterable[np.ndarray]) -> bytes:
    """(H, W) bool frames -> 1-bit Pixel Data: frames follow each other without padding
    (PS3.5 8.1.1: a frame may start inside a byte), first pixel in the lowest bit, and the
    whole value padded to an even length."""
    out = bytearray()
    pending: list[np.ndarray] = []
    for mask in frames:
        pending.append(np.asarray(mask, bool).ravel())
        if len(pending) == 8:  # 8 frames always end on a byte boundary
            out += np.packbits(np.concatenate(pending), bitorder="little").tobytes()
            pending = []
    if pending:
        out += np.packbits(np.concatenate(pending), bitorder="little").tobytes()
    if len(out) % 2:
        out += b"\x00"
    return bytes(out)


def _source_frame_item(source: Dataset, frame_number: int) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if "NumberOfFrames" in source:  # a single-frame image is referenced as a whole
        ref.ReferencedFrameNumber = frame_number
    ref.PurposeOfReferenceCodeSequence = [_code("121322", "DCM", "Source image for image processing operation")]
    ref.SpatialLocationsPreserved = "YES"
    derivation = Dataset()
    derivation.DerivationCodeSequence = [_code("113076", "DCM", "Segmentation")]
    derivation.SourceImageSequence = [ref]
    return derivation


def _dimension(uid: str, pointer: int, group: int, label: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = uid
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = group
    item.DimensionDescriptionLabel = label
    return item


def build_segmentation(
    source: Dataset,
    frame_numbers: Sequence[int],
    segments: Sequence[Dataset],
    pixel_data: bytes,
    *,
    series_uid: str,
    sop_uid: str,
    equipment: dict[str, str],
    overlap: bool,
    content_description: str,
) -> Dataset:
    """The Segmentation dataset, with its file meta, ready for dcmwrite.

    source: the source header (Pixel Data not needed). frame_numbers: the 1-based source
    frames present, ascending. segments: Segment Sequence items (numbers 1..S).
    pixel_data: pack_frames() of S x len(frame_numbers) frames in the order above.
    equipment: Manufacturer, ManufacturerModelName, DeviceSerialNumber, SoftwareVersions.
    """
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    ds = Dataset()
    if "SpecificCharacterSet" in source:  # the copied names are encoded in it
        ds.SpecificCharacterSet = deepcopy(source.SpecificCharacterSet)
    ds.SOPClassUID, ds.SOPInstanceUID = SegmentationStorage, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    copy_patient_and_study(source, ds)
    # General Series, Segmentation Series
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "SEG", series_uid, 1
    ds.SeriesDescription = "medsam-edge segmentation"
    if "FrameOfReferenceUID" in source:
        ds.FrameOfReferenceUID = source.FrameOfReferenceUID
        ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    for keyword, value in equipment.items():
        setattr(ds, keyword, value)
    # General Image, Segmentation Image
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.InstanceNumber = 1
    add_patient_orientation(source, ds)
    ds.ContentDate, ds.ContentTime = date, time
    ds.ContentLabel = "MEDSAM_EDGE"
    ds.ContentDescription = content_description
    ds.SegmentationType = "BINARY"
    ds.SegmentSequence = DicomSequence(list(segments))
    ds.SegmentsOverlap = "YES" if overlap else "NO"
    # A segmentation of a lossy picture says so (C.8.20.2: copied from the source).
    ds.LossyImageCompression = source.get("LossyImageCompression", "00")
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in source and ds.LossyImageCompression == "01":
            ds[keyword] = deepcopy(source[keyword])
    # Image Pixel
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(source.Rows), int(source.Columns)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    # Multi-frame Dimension
    organization = Dataset()
    organization.DimensionOrganizationUID = dim_uid = generate_uid()
    ds.DimensionOrganizationSequence = [organization]
    ds.DimensionIndexSequence = [
        _dimension(dim_uid, REFERENCED_SEGMENT_NUMBER, SEGMENT_IDENTIFICATION_SEQUENCE, "Segment Number"),
        _dimension(dim_uid, TEMPORAL_POSITION_INDEX, FRAME_CONTENT_SEQUENCE, "Source Frame"),
    ]
    # Multi-frame Functional Groups
    per_frame = []
    for segment in segments:
        for number in frame_numbers:
            item = Dataset()
            content = Dataset()
            content.DimensionIndexValues = [int(segment.SegmentNumber), number]
            content.TemporalPositionIndex = number
            item.FrameContentSequence = [content]
            item.DerivationImageSequence = [_source_frame_item(source, number)]
            identification = Dataset()
            identification.ReferencedSegmentNumber = int(segment.SegmentNumber)
            item.SegmentIdentificationSequence = [identification]
            per_frame.append(item)
    ds.NumberOfFrames = len(per_frame)
    ds.SharedFunctionalGroupsSequence = [Dataset()]
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    # Common Instance Reference: the source's series and instance
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedInstanceSequence = [instance]
    ds.ReferencedSeriesSequence = [series]
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SegmentationStorage, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
