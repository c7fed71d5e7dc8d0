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


# --- the deep corpus: a marker in every E.1-1 attribute at four depths --------------------------------------
#
# Every marker matches MARKER: ``PHI``, four digits (the table row, or 9000 + the sequence's row for the free
# text of sequence items), and at depth 1-4 a letter and the depth. ``deep_planted_dataset`` returns, for
# each marker, where it was planted.
MARKER = rb"PHI\d{4}(?:[ACDEFGHJKM]\d)?"  # not X or B: the letters after the top-level markers
DEPTHS = 4
# Free text the table does not name, planted in the items of every sequence of the table (the sequence's
# action decides), each with its marker letter; two attributes the table names (their own rows decide).
_ITEM_TEXT = {
    0x00080100: ("SH", "CodeValue", "A"),
    0x00080102: ("SH", "CodingSchemeDesignator", "J"),
    0x00080104: ("LO", "CodeMeaning", "C"),
    0x0040A160: ("UT", "TextValue", "E"),
    0x00700006: ("ST", "UnformattedTextValue", "F"),
    0x0040A123: ("PN", "PersonName", "G"),
    0x00400254: ("LO", "PerformedProcedureStepDescription", "H"),
}
CONCEPT_NAME, CONCEPT_CODE = 0x0040A043, 0x0040A168
#: A standard code (DCM 121071 "Finding") whose CodeMeaning is planted: the code stays, the meaning is replaced.
STANDARD_CODE = ("121071", "DCM", "Finding")


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _sequence_item(seq_tag: int, row: int, depth: int, where: dict[str, str], label: str) -> Dataset:
    """An item of the table sequence ``seq_tag`` (table row ``row``) at ``depth``: free text, coded concepts
    as in SR content (a standard code with a planted meaning, a local code), a UID, a date, a coded string,
    and below depth 4 the same sequence again."""
    item = Dataset()
    n = 9000 + row
    for tag, (vr, keyword, letter) in _ITEM_TEXT.items():
        marker = f"PHI{n:04d}{letter}{depth}"
        where[marker] = f"{label} depth {depth} {keyword}"
        item.add_new(tag, vr, f"{marker}^PLANTED" if vr == "PN" else marker)
    meaning = f"PHI{n:04d}M{depth}"
    where[meaning] = f"{label} depth {depth} ConceptNameCodeSequence.CodeMeaning (standard code)"
    item.add_new(CONCEPT_NAME, "SQ", Sequence([_code_item(STANDARD_CODE[0], STANDARD_CODE[1], meaning)]))
    local = f"PHI{n:04d}K{depth}"
    where[local] = f"{label} depth {depth} ConceptCodeSequence.CodeValue (local code)"
    item.add_new(CONCEPT_CODE, "SQ", Sequence([_code_item(local, "99LOCAL", "local concept")]))
    item.ValueType = "CODE"
    item.add_new(0x0040A121, "DA", "20010203")  # Date
    item.ReferencedSOPInstanceUID = f"1.2.999.55.{depth}.{row}"
    if depth < DEPTHS:
        item.add_new(seq_tag, "SQ", Sequence([_sequence_item(seq_tag, row, depth + 1, where, label)]))
    return item


_MARKED_VRS = ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "PN", "OB", "OW", "UN")


def _table_item(depth: int, where: dict[str, str]) -> Dataset:
    """Every plantable non-sequence attribute of the table with markers of this depth; the next depth below."""
    item = Dataset()
    for i, row, tag in table_rows():
        vr = row.vr.split(" or ")[0]
        if vr == "SQ" or tag in (0x00080016, 0x00080018):
            continue
        if vr in _MARKED_VRS:
            marker = f"PHI{i:04d}D{depth}"
            where[marker] = f"{row.keyword} depth {depth}"
            value = f"{marker}^PLANTED" if vr == "PN" else marker
            item.add_new(tag, vr, value.encode() if vr in ("OB", "OW", "UN") else value)
            continue
        value = planted(vr, i)
        if value is None:
            continue
        item.add_new(tag, vr, f"1.2.999.77.{depth}.{i}" if vr == "UI" else value)
    if depth < DEPTHS:
        item.AnatomicRegionSequence = Sequence([_table_item(depth + 1, where)])
    return item


def deep_planted_dataset() -> tuple[Dataset, dict[str, str]]:
    """The planted corpus plus (a) every plantable non-sequence table attribute again at depths 1 to 4 inside
    a sequence the table does not name (DerivationCodeSequence > AnatomicRegionSequence > ...), and (b) in every
    sequence of the table, items with free text, coded concepts, a UID and a date, the same sequence nested
    four deep. Returns (dataset, marker -> where it was planted); markers are found with :data:`MARKER`."""
    ds, _ = planted_dataset()
    where: dict[str, str] = {}
    for i, row, tag in table_rows():
        vr = row.vr.split(" or ")[0]
        if vr == "SQ":
            ds.add_new(tag, "SQ", Sequence([_sequence_item(tag, i, 1, where, row.keyword)]))
        elif vr in _MARKED_VRS and tag in ds:
            where[f"PHI{i:04d}"] = f"{row.keyword} depth 0"
    ds.DerivationCodeSequence = Sequence([_table_item(1, where)])
    return ds, where
