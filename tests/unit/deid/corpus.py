"""A planted-PHI corpus: every attribute of PS3.15 Table E.1-1 with a traceable value, and more.

Each planted string contains ``PHI`` and the row number, so a search of the output bytes for the planted value
is unambiguous; dates are distinct real dates (a shifted date never equals a planted one when jitter is
larger than the spread), UIDs are distinct and not well-known.
"""

from __future__ import annotations

import datetime as dt

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicom_relay.deid.table import load_table

SKIP_GROUPS = {0x0000, 0x0002, 0x0004}  # command, file meta and DICOMDIR records are not dataset attributes
BASE_DATE = dt.date(1990, 1, 1)


NON_TABLE_DA = "18990909"  # before every planted date: a shifted value never equals one
NON_TABLE_DT = "18980808080808"


def non_table_date_tags() -> tuple[int, int]:
    """A DA and a DT attribute of the data dictionary that Table E.1-1 does not name (E.1.1 note 4)."""
    from pydicom.datadict import DicomDictionary

    named = {tag_of(r) for r in load_table()[1] if r.pattern == "exact"}
    found = {}
    for tag, entry in sorted(DicomDictionary.items()):
        if entry[0] in ("DA", "DT") and tag not in named and tag >> 16 not in SKIP_GROUPS and entry[0] not in found:
            found[entry[0]] = tag
    return found["DA"], found["DT"]


def tag_of(row) -> int:
    return int(row.tag[1:5] + row.tag[6:10], 16)


def planted(vr: str, i: int):
    vr = vr.split(" or ")[0]
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"):
        return f"PHI{i:04d}X"
    if vr == "PN":
        return f"PHI{i:04d}^PLANTED"
    if vr == "DA":
        return (BASE_DATE + dt.timedelta(days=7 * i)).strftime("%Y%m%d")
    if vr == "DT":
        return (BASE_DATE + dt.timedelta(days=7 * i)).strftime("%Y%m%d") + "101112"
    if vr == "TM":
        return "101112"
    if vr == "UI":
        return f"1.2.999.77.{i}"
    if vr == "AS":
        return f"{i % 100:03d}Y"
    if vr in ("DS", "IS"):
        return str(i)
    if vr in ("US", "UL", "SS", "SL", "UV", "SV"):
        return i
    if vr in ("FL", "FD"):
        return float(i)
    if vr in ("OB", "OW", "UN"):
        return f"PHI{i:04d}B".encode()
    if vr == "UR":
        return f"http://phi{i:04d}.example"
    return None


def table_rows():
    """(row index, row, tag) of every exact row that can be planted in a dataset."""
    out = []
    for i, row in enumerate(load_table()[1]):
        if row.pattern != "exact" or not row.vr:
            continue
        tag = tag_of(row)
        if tag >> 16 in SKIP_GROUPS or row.vr in ("AT",):
            continue
        out.append((i, row, tag))
    return out


def nested_item(depth: int, label: str) -> Dataset:
    """An item with PHI at this depth and (below depth 4) a further nested standard and private sequence."""
    item = Dataset()
    item.PatientName = f"PHINEST{label}{depth}^DEEP"
    item.OtherPatientIDs = f"PHINESTID{label}{depth}"
    item.StudyDate = (BASE_DATE + dt.timedelta(days=1000 + depth)).strftime("%Y%m%d")
    item.ReferencedSOPInstanceUID = f"1.2.999.88.{depth}"
    item.ReferencedSOPClassUID = CTImageStorage
    block = item.private_block(0x0029, "PHI CREATOR", create=True)
    block.add_new(0x01, "LO", f"PHIPRIV{label}{depth}")
    if depth < 4:
        item.AnatomicRegionSequence = Sequence([nested_item(depth + 1, label)])
        block.add_new(0x02, "SQ", Sequence([nested_item(depth + 1, label + "P")]))
    return item


def planted_dataset(sop_uid: str = "1.2.999.1.1", series_uid: str = "1.2.999.2.1") -> tuple[Dataset, dict[int, object]]:
    """A CT-classed dataset holding every plantable table attribute; returns (dataset, tag -> planted value)."""
    ds = Dataset()
    values: dict[int, object] = {}
    for i, row, tag in table_rows():
        vr = row.vr.split(" or ")[0]
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"PHI{i:04d}^INSEQ"
            item.ReferencedSOPInstanceUID = f"1.2.999.66.{i}"
            ds.add_new(tag, "SQ", Sequence([item]))
            values[tag] = item
            continue
        v = planted(vr, i)
        if v is None:
            continue
        ds.add_new(tag, vr, v)
        values[tag] = v
    # Attributes the profile must keep, so the file is an identifiable CT instance.
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    values[0x00080018], values[0x0020000E] = sop_uid, series_uid
    ds.Modality = "CT"
    ds.BurnedInAnnotation = "NO"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    # A date no table row names (handled by VR) and nested/private content four levels deep.
    da_tag, dt_tag = non_table_date_tags()
    ds.add_new(da_tag, "DA", NON_TABLE_DA)
    ds.add_new(dt_tag, "DT", NON_TABLE_DT)
    ds.DerivationCodeSequence = Sequence([nested_item(1, "A")])
    block = ds.private_block(0x0011, "PHI CREATOR", create=True)
    block.add_new(0x01, "LO", "PHIPRIVTOP")
    block.add_new(0x02, "SQ", Sequence([nested_item(1, "T")]))
    # Curve and overlay groups.
    ds.add_new(0x50000000 | 0x3000, "OB", b"PHICURVE")
    ds.add_new(0x60000010, "US", 2)
    ds.add_new(0x60000011, "US", 2)
    ds.add_new(0x60004000, "LT", "PHIOVERLAYCOMMENT")
    ds.add_new(0x60003000, "OW", b"\x00" * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.SourceApplicationEntityTitle = "PHISENDERAE"
    ds.preamble = b"PHIPREAMBLE".ljust(128, b"\0")
    return ds, values
