"""Generate synthetic DICOM studies with planted, traceable identifiers.

Used by ``make run`` (a sample CT study dropped into the inbox), the tests and the benchmark. Every value that
identifies the patient is derived from ``patient_id`` so a test can search the output for it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid


@dataclass(frozen=True)
class SampleStudy:
    """What was planted in a generated study: the values a leak check looks for."""

    folder: Path
    patient_id: str
    patient_name: str
    birth_date: str
    accession_number: str
    study_date: str
    study_instance_uid: str
    series_instance_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    frame_of_reference_uid: str

    def identifiers(self) -> list[str]:
        """Every planted identifying value, as it would appear in the file bytes."""
        return [
            self.patient_id,
            self.patient_name,
            self.accession_number,
            self.study_instance_uid,
            self.frame_of_reference_uid,
            *self.series_instance_uids,
            *self.sop_instance_uids,
        ]


def _uid(seed: str, label: str) -> str:
    # Deterministic per seed so that a regenerated study is the same study.
    return generate_uid(entropy_srcs=[seed, label])


def generate_ct_study(
    folder: Path,
    patient_id: str = "MRN0012345",
    n_instances: int = 10,
    n_series: int = 1,
    rows: int = 512,
    columns: int = 512,
    seed: str | None = None,
    study_date: str = "20240314",
    accession_number: str | None = None,
) -> SampleStudy:
    """Write a CT study of ``n_instances`` 16-bit slices spread over ``n_series`` series into ``folder``.

    File names are ``IM000001.dcm`` and on; the folder is created. Pixel data is a deterministic gradient
    plus noise, so files compress and differ like real slices.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seed = seed or f"{patient_id}/{study_date}"
    digest = hashlib.sha256(seed.encode()).hexdigest()
    patient_name = f"DOE^JANE{digest[:4].upper()}"
    accession = accession_number or f"ACC{int(digest[4:12], 16) % 10**8:08d}"
    birth_date = "19700101"
    study_uid = _uid(seed, "study")
    frame_uid = _uid(seed, "frame")
    series_uids = tuple(_uid(seed, f"series{i}") for i in range(n_series))
    sop_uids: list[str] = []
    rng = np.random.default_rng(int(digest[:8], 16))
    base = (np.add.outer(np.arange(rows), np.arange(columns)) % 2048).astype(np.uint16)

    first_uid = None
    for i in range(n_instances):
        series_index = i * n_series // n_instances
        sop_uid = _uid(seed, f"instance{i}")
        sop_uids.append(sop_uid)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = study_date
        ds.SeriesDate = study_date
        ds.AcquisitionDate = study_date
        ds.ContentDate = study_date
        ds.StudyTime = "101500"
        ds.SeriesTime = "101600"
        ds.AcquisitionTime = "101700"
        ds.ContentTime = "101700"
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.Manufacturer = "ACME Imaging"
        ds.InstitutionName = "St. Example Hospital"
        ds.InstitutionAddress = "1 Example Road, Exampleton"
        ds.ReferringPhysicianName = "HOUSE^GREGORY"
        ds.StationName = "CT01"
        ds.StudyDescription = "CT CHEST W/O CONTRAST"
        ds.SeriesDescription = f"AXIAL {series_index + 1}"
        ds.OperatorsName = "TECH^TOM"
        ds.ManufacturerModelName = "Example CT 9000"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.IssuerOfPatientID = "Example Hospital MRN"
        ds.PatientBirthDate = birth_date
        ds.PatientSex = "F"
        ds.PatientAge = "054Y"
        ds.OtherPatientIDs = f"{patient_id}-OLD"
        ds.PatientAddress = "42 Privacy Lane, Exampleton"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = "1.0"
        ds.KVP = "120"
        ds.DeviceSerialNumber = "SN-4711"
        ds.SoftwareVersions = "1.0"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids[series_index]
        ds.StudyID = "1"
        ds.SeriesNumber = series_index + 1
        ds.InstanceNumber = i + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [-250.0, -250.0, float(-i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = float(-i)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.PixelSpacing = [0.7, 0.7]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.BurnedInAnnotation = "NO"
        if first_uid is not None:
            ref = Dataset()
            ref.ReferencedSOPClassUID = CTImageStorage
            ref.ReferencedSOPInstanceUID = first_uid
            ds.ReferencedImageSequence = Sequence([ref])
        else:
            first_uid = sop_uid
        noise = rng.integers(0, 64, size=(rows, columns), dtype=np.uint16)
        ds.PixelData = ((base + noise + i) & 0x0FFF).astype("<u2").tobytes()
        ds.save_as(folder / f"IM{i + 1:06d}.dcm", enforce_file_format=True)

    return SampleStudy(
        folder=folder,
        patient_id=patient_id,
        patient_name=patient_name,
        birth_date=birth_date,
        accession_number=accession,
        study_date=study_date,
        study_instance_uid=study_uid,
        series_instance_uids=series_uids,
        sop_instance_uids=tuple(sop_uids),
        frame_of_reference_uid=frame_uid,
    )


def drop_atomically(source: Path, inbox: Path, name: str, suffix: str = ".tmp0001") -> Path:
    """Copy ``source`` into ``inbox`` the way a sender does: as ``NAME.tmpXXXX/``, then rename to ``NAME/``."""
    import shutil

    staging = inbox / f"{name}{suffix}"
    shutil.copytree(source, staging)
    final = inbox / name
    os.rename(staging, final)
    return final

