"""Index a batch folder: which files are DICOM instances, and of which Study / Series / Instance.

Only the header is read (``stop_before_pixels``): indexing a 500-slice CT reads a few hundred KB, not 250 MB.
A file that is not a readable DICOM instance is *not* an error of the batch as a whole: it is listed with a
reason and held back in quarantine, and the rest of the batch goes on (sendit's rule, with the reason kept).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .dicom_extent import Malformed, Truncated, check_extent, dataset_start

# pydicom is imported by the functions that read a file with it, when a file needs it: the raw fast path below
# serves the common case, and ``import pydicom`` costs more CPU than indexing hundreds of files
# (dicom_relay/deid/dictionary.py).

# Media Storage Directory Storage: a DICOMDIR indexes files, it is not an instance to send.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# The header fields import and get_identifiers need; reading only these keeps import fast.
INDEX_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientBirthDate",
    "AccessionNumber", "StudyDate", "Modality", "BurnedInAnnotation",
]


@dataclass(frozen=True)
class IndexedInstance:
    """One readable instance. Holds original identifiers: keep it in memory, never in XCom or logs."""

    relpath: str
    size_bytes: int
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    patient_birth_date: str
    accession_number: str
    study_date: str
    modality: str


@dataclass(frozen=True)
class Rejected:
    relpath: str
    reason: str
    #: A readable instance whose SOP Instance UID another file of the folder already has (not an unreadable file).
    duplicate: bool = False


class KeptHeaders(dict):
    """``relpath -> (file key, rawpath.read_file result)``: the headers the index parsed on the raw path, for
    de-identification to use instead of reading and parsing each file a second time (``dicom-relay deidentify``).

    Bounded: headers are kept while they add up to less than :attr:`LIMIT` bytes (a CT header is ~4 KB, 500 of
    them with their parsed elements ~6 MB). A file changed since it was indexed (another inode, size,
    modification or change time: :func:`~dicom_relay.deid.rawpath.file_key`) is read again by the engine; a file
    changed within the last second is not kept at all.
    """

    LIMIT = 32 << 20
    #: A file changed less than this long ago is not kept: a rewrite of the same size within the file system's
    #: clock tick would not change its key.
    SETTLED_NS = 1_000_000_000

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def keep(self, relpath: str, key: tuple, parsed: tuple) -> None:
        buf, pixel_at = parsed[0], parsed[4]
        if pixel_at >= 0:
            # The header and the Pixel Data element's own header (the engine checks it ends the file); not the
            # pixels read along with the header.
            buf = buf[: pixel_at + 12]
            parsed = (buf, *parsed[1:])
        cost = len(buf) + 160 * len(parsed[3])
        if self.size + cost <= self.LIMIT:
            self[relpath] = (key, parsed)
            self.size += cost


@dataclass
class FolderIndex:
    instances: list[IndexedInstance] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: With ``index_folder(..., keep_headers=True)``: the parsed headers of the instances read on the raw path.
    headers: KeptHeaders | None = field(default=None, repr=False)

    @property
    def studies(self) -> set[str]:
        return {i.study_instance_uid for i in self.instances}

    @property
    def series(self) -> set[str]:
        return {i.series_instance_uid for i in self.instances}

    @property
    def patients(self) -> set[str]:
        return {i.patient_id for i in self.instances}


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


# The walk reads item headers and seeks past values: a small buffer keeps it from reading kilobytes of pixel data
# around each of the thousands of fragment headers of a long multi-frame instance.
WALK_BUFFER = 1024


def _extent_problem(path: Path, ds, size: int) -> str | None:
    """Why the file is cut short or its encapsulated pixel data unreadable, or None (see :mod:`.dicom_extent`).

    Import reads headers only, so without this walk a file cut short in its pixel data (or in an element after
    it) would be indexed, delivered cut short, and its original deleted.
    """
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return None  # the whole data set is one zlib stream: pydicom's read already inflated (and checked) it
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    try:
        with open(path, "rb", buffering=WALK_BUFFER) as fp:
            check_extent(fp, size, dataset_start(fp), implicit, little)
    except Truncated as exc:
        return f"is truncated ({exc})"
    except Malformed as exc:
        return f"is not a readable DICOM file ({exc})"
    return None


def _truncation_after_failed_read(path: Path, size: int) -> str | None:
    """'is truncated (...)' if the walk of a file pydicom could not read finds it cut short, else None.

    The encoding comes from the File Meta Information alone (the data set is what pydicom failed on)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        ts = pydicom.uid.UID(str(meta.get("TransferSyntaxUID", "")))
        if not ts or ts == DeflatedExplicitVRLittleEndian:
            return None
        with open(path, "rb", buffering=WALK_BUFFER) as fp:
            check_extent(fp, size, dataset_start(fp), ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian)
    except Truncated as exc:
        return f"is truncated ({exc})"
    except Exception:  # noqa: BLE001 - no better reason than pydicom's
        return None
    return None


# The index fields by tag, for the raw fast path below.
_RAW_INDEX_TAGS = {
    0x00080016: "sop_class_uid", 0x00080018: "sop_instance_uid", 0x0020000D: "study_instance_uid",
    0x0020000E: "series_instance_uid", 0x00100020: "patient_id", 0x00100030: "patient_birth_date",
    0x00080050: "accession_number", 0x00080020: "study_date", 0x00080060: "modality",
}
_DIRECTORY_RECORD_SEQUENCE = 0x00041220


def _read_instance_raw(path: Path, relpath: str, size: int, keep: KeptHeaders | None = None) -> IndexedInstance | None:
    """The common case without pydicom, on the de-identification engine's raw header reader: a Part 10 file in
    little endian whose header parses completely, whose index values are plain ASCII and single-valued, and whose
    native Pixel Data (if any) ends the file exactly. None for anything else: :func:`read_instance` then reads
    it with pydicom and the extent walk, and says precisely what is wrong (same result, about 4x the time).
    ``keep``: where to keep the parsed header of an indexed instance (see :class:`KeptHeaders`)."""
    import struct

    from .deid import rawpath

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        before = os.fstat(fd) if keep is not None else None
        parsed = rawpath.read_file(fd)
        # Kept only if nothing changed the file while it was read, and if its last change is older than the
        # file system's clock tick (a few ms): a rewrite of the same size in the same tick would keep the key.
        key = None
        if before is not None and time.time_ns() - before.st_ctime_ns > keep.SETTLED_NS:
            key = rawpath.file_key(before)
            if rawpath.file_key(os.fstat(fd)) != key:
                key = None
    except (rawpath.Fallback, struct.error, RecursionError, OSError, ValueError):
        return None
    finally:
        os.close(fd)
    buf, _, _, elems, pixel_at, implicit, file_size = parsed
    if buf[128:132] != b"DICM" or file_size != size:
        return None
    if pixel_at >= 0:
        # Only native Pixel Data of defined length that ends the file exactly (checked without reading it);
        # encapsulated data, trailing padding or anything after the pixels: the full path walks it.
        if len(buf) < pixel_at + 12 or struct.unpack_from("<L", buf, pixel_at)[0] != 0x00107FE0:
            return None
        if implicit:
            length, header = struct.unpack_from("<L", buf, pixel_at + 4)[0], 8
        elif buf[pixel_at + 4 : pixel_at + 6] in (b"OB", b"OW"):
            length, header = struct.unpack_from("<L", buf, pixel_at + 8)[0], 12
        else:
            return None
        if length == 0xFFFFFFFF or pixel_at + header + length != file_size:
            return None
    values = dict.fromkeys(_RAW_INDEX_TAGS.values(), "")
    for el in elems:
        name = _RAW_INDEX_TAGS.get(el.tag)
        if name is None:
            if el.tag == _DIRECTORY_RECORD_SEQUENCE:
                return None
            continue
        v = buf[el.vstart : el.vend]
        if not v.isascii() or b"\\" in v or b"\x1b" in v:
            return None  # several values or a character set: pydicom decodes it
        values[name] = v.decode("ascii").rstrip("\x00 ").strip()
    uids = ("sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid")
    if not all(values[k] for k in uids) or values["sop_class_uid"] == DICOMDIR_SOP_CLASS:
        return None
    if key is not None:
        keep.keep(relpath, key, parsed)
    return IndexedInstance(relpath=relpath, size_bytes=size, **values)


def read_instance(path: Path, relpath: str, keep: KeptHeaders | None = None) -> IndexedInstance | Rejected:
    """Index one file, or say (without PHI) why it is not a usable instance. ``keep``: see :class:`KeptHeaders`."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return Rejected(relpath, f"cannot be read ({exc.strerror})")
    if size == 0:
        return Rejected(relpath, "is empty (0 bytes)")
    fast = _read_instance_raw(path, relpath, size, keep)
    if fast is not None:
        return fast
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=INDEX_TAGS)
            except InvalidDicomError:
                # Files without the 128-byte preamble and DICM prefix exist in the wild; accept them only if the
                # forced read finds the identifying UIDs of an instance.
                try:
                    fp.seek(0)
                    ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=INDEX_TAGS, force=True)
                except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
                    return Rejected(relpath, "is not a DICOM file")
                if not any(_text(ds, k) for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")):
                    # A forced read of a text, JSON or ZIP file "finds" elements too: none of them is a UID.
                    return Rejected(relpath, "is not a DICOM file (no 'DICM' prefix and no instance UIDs)")
            sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", {}), "MediaStorageSOPClassUID")
            if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
                return Rejected(relpath, "is a DICOMDIR (an index of files, not an instance)")
            missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
                       if not _text(ds, k)]
            if missing:
                return Rejected(relpath, f"is not a usable DICOM instance (missing {', '.join(missing)})")
            # Only now: the walk of a file that is no DICOM instance at all would report nonsense.
            problem = _extent_problem(path, ds, size)
            if problem:
                return Rejected(relpath, problem)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt: keep the reason, not the content
        # pydicom's header read fails on a file cut inside a header sequence: the walk can say so precisely.
        return Rejected(relpath, _truncation_after_failed_read(path, size)
                        or f"is not a readable DICOM file ({type(exc).__name__})")
    return IndexedInstance(
        relpath=relpath,
        size_bytes=size,
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        modality=_text(ds, "Modality"),
    )


def walk_files(folder: Path) -> tuple[list[str], list[Rejected]]:
    """Relative paths of the regular files below ``folder``; symbolic links are listed as rejected, never followed."""
    files: list[str] = []
    rejected: list[Rejected] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(dirs):
            full = os.path.join(root, name)
            if os.path.islink(full):
                rejected.append(Rejected(os.path.relpath(full, folder), "is a symbolic link (not followed)"))
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder)
            if os.path.islink(full):
                rejected.append(Rejected(rel, "is a symbolic link (not followed)"))
            elif os.path.isfile(full):
                files.append(rel)
            else:
                rejected.append(Rejected(rel, "is not a regular file"))
    return sorted(files), rejected


def index_folder(folder: Path, *, keep_headers: bool = False) -> FolderIndex:
    """Index every file below ``folder``. A repeated SOP Instance UID keeps the first file, rejects the rest.

    ``keep_headers``: keep the parsed headers for de-identification in the same process (``index.headers``,
    :class:`KeptHeaders`)."""
    files, rejected = walk_files(folder)
    index = FolderIndex(rejected=list(rejected), headers=KeptHeaders() if keep_headers else None)
    seen: dict[str, str] = {}
    for rel in files:
        result = read_instance(folder / rel, rel, index.headers)
        if isinstance(result, Rejected):
            index.rejected.append(result)
        elif result.sop_instance_uid in seen:
            index.rejected.append(Rejected(rel, "repeats the SOP Instance UID of another file in the batch", duplicate=True))
        else:
            seen[result.sop_instance_uid] = rel
            index.instances.append(result)
    return index
