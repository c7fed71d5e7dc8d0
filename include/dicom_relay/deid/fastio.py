"""Reading and writing instances without decoding (or even loading) the pixel data.

The bulk of a DICOM file is its Pixel Data element, which de-identification never changes. ``read_header``
parses everything before it (``stop_before_pixels``) and records where the pixel elements start and end in the
source file; ``write`` writes the de-identified header with pydicom and then copies those bytes from the source
file with ``os.copy_file_range`` (in-kernel, no Python buffers). Because the transfer syntax is unchanged the
copied bytes are exactly what pydicom would have written, and compressed pixel data passes through
byte-for-byte. Anything unusual (deflated transfer syntax, elements after the pixel data other than trailing
padding) falls back to a full pydicom read and write.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_relay.deid.vr import LONG_VR_NAMES, LONG_VRS

if TYPE_CHECKING:  # pydicom is imported by the functions that read or write a dataset: the raw path uses
    # scan_pixel_elements and copy_range only, and runs without pydicom (see dictionary.py)
    from pydicom.dataset import Dataset, FileDataset

_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}  # Float, Double Float and (plain) Pixel Data
_PADDING = 0xFFFCFFFC


@dataclass
class Header:
    ds: FileDataset
    tail: tuple[int, int] | None  # (offset, length) of the pixel elements in the source, None if no pixels


class NeedsFullRead(Exception):
    pass


def scan_pixel_elements(f, offset: int, size: int, little: bool, implicit: bool) -> int:
    """End offset of the run of pixel elements starting at ``offset``; raise if something else follows."""
    e = "<" if little else ">"
    pos = offset
    f.seek(pos)
    while pos < size:
        head = f.read(8)
        if len(head) < 8:
            raise NeedsFullRead
        group, elem = struct.unpack(e + "HH", head[:4])
        tag = group << 16 | elem
        if tag not in _PIXEL_TAGS:
            if tag == _PADDING:
                return pos  # trailing padding is dropped (PS3.15 lists it as X)
            raise NeedsFullRead
        if implicit:
            (length,) = struct.unpack(e + "L", head[4:8])
            hdr = 8
        elif head[4:6] in LONG_VRS:
            (length,) = struct.unpack(e + "L", f.read(4))
            hdr = 12
        else:
            (length,) = struct.unpack(e + "H", head[6:8])
            hdr = 8
        pos += hdr
        if length == 0xFFFFFFFF:
            # Encapsulated: items until the sequence delimiter.
            while True:
                f.seek(pos)
                item = f.read(8)
                if len(item) < 8:
                    raise NeedsFullRead
                ig, ie, il = struct.unpack(e + "HHL", item)
                pos += 8
                if (ig, ie) == (0xFFFE, 0xE0DD):
                    break
                if (ig, ie) != (0xFFFE, 0xE000) or il == 0xFFFFFFFF:
                    raise NeedsFullRead
                pos += il
        else:
            pos += length
        f.seek(pos)
    if pos > size:
        raise NeedsFullRead
    return pos


def read_header(path: Path) -> Header:
    """Read ``path`` up to its pixel data, or completely when the fast path does not apply."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    with open(path, "rb") as f:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            return Header(_read_without_meta(path), None)
        ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
        if ts is None or UID(ts).is_deflated or not UID(ts).is_transfer_syntax:
            # Checked first: pydicom inflates a deflated dataset (and may guess an unknown encoding) from the
            # whole rest of the file, so the file position says nothing about where the pixel data starts. Taken
            # as "nothing after the header", it would drop the pixel data and hide it from the pixel stage.
            return Header(pydicom.dcmread(path), None)
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if offset >= size:
            return Header(ds, None)
        try:
            end = scan_pixel_elements(f, offset, size, UID(ts).is_little_endian, UID(ts).is_implicit_VR)
        except (NeedsFullRead, struct.error):
            return Header(pydicom.dcmread(path), None)
    return Header(ds, (offset, end - offset))


def with_pixels(header: Header, path: Path) -> Header:
    """``header`` with its pixel elements read from ``path`` into its dataset (for the pixel stage).

    Only the bytes of :attr:`Header.tail` are read and parsed: the header is not parsed a second time.
    """
    if header.tail is None:
        return header
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    offset, length = header.tail
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise EOFError("file shorter than its pixel data")
    implicit, little = header.ds.original_encoding
    tail = read_dataset(DicomBytesIO(data), implicit, little)
    for elem in tail.elements():
        header.ds[elem.tag] = elem
    return Header(header.ds, None)


def _read_without_meta(path: Path) -> FileDataset:
    """A dataset stored without preamble and file meta (ACR-NEMA style or a bare C-STORE dump).

    Accepted only if it parses into something with a SOP Class UID; the file meta is then made up from the
    encoding pydicom detected, so the output is a proper Part 10 file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)
    if "SOPClassUID" not in ds or None in ds.original_encoding:
        raise InvalidDicomError("not a DICOM dataset")
    implicit, little = ds.original_encoding
    ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\0" * 128
    return ds


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    copied = 0
    try:
        while copied < length:
            n = os.copy_file_range(src_fd, dst_fd, length - copied, offset + copied)
            if n == 0:
                break
            copied += n
    except OSError:
        pass  # e.g. cross-device on old kernels: finish with plain reads below
    if copied < length:
        os.lseek(src_fd, offset + copied, os.SEEK_SET)
        while copied < length:
            chunk = os.read(src_fd, min(1 << 20, length - copied))
            if not chunk:
                raise OSError("source file shrank while copying pixel data")
            os.write(dst_fd, chunk)
            copied += len(chunk)


def encode_dataset(ds: Dataset, implicit: bool, little: bool) -> bytes:
    """Encode the top level of ``ds`` exactly as pydicom's ``write_dataset`` would, but faster.

    Raw elements (never decoded, the large majority after de-identification) are framed with ``struct`` and
    their value bytes copied; everything else (decoded or new elements, sequences, ambiguous VRs, undefined
    lengths) goes through pydicom's own ``write_data_element``. A unit test checks byte equality with pydicom.
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
    from pydicom.valuerep import AMBIGUOUS_VR

    e = "<" if little else ">"
    pack_tag, pack_l, pack_h = struct.Struct(e + "HH").pack, struct.Struct(e + "L").pack, struct.Struct(e + "H").pack
    out = bytearray()
    d = ds._dict
    encodings = None
    for tag in sorted(d):
        elem = d[tag]
        if (
            isinstance(elem, RawDataElement)
            and elem.is_implicit_VR == implicit
            and elem.is_little_endian == little
            and elem.length != 0xFFFFFFFF
            and (implicit or (elem.VR is not None and len(elem.VR) == 2))
        ):
            value = elem.value or b""
            n = len(value)
            out += pack_tag(tag >> 16, tag & 0xFFFF)
            if implicit:
                out += pack_l(n)
            elif elem.VR in LONG_VR_NAMES:
                out += elem.VR.encode() + b"\0\0" + pack_l(n)
            elif n < 0x10000:
                out += elem.VR.encode() + pack_h(n)
            else:
                raise ValueError("value too long for a short-length VR")
            out += value
            continue
        if encodings is None:
            encodings = ds._character_set
        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = implicit, little
        full = ds[tag]
        if full.VR in AMBIGUOUS_VR:
            full = correct_ambiguous_vr_element(full, ds, little)
        write_data_element(buf, full, encodings)
        out += buf.getvalue()
    return bytes(out)


def encode_file_meta(meta) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    buf = DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = False, True
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


def write(header: Header, src: Path, dst: Path) -> None:
    """Write the (de-identified) dataset of ``header`` to ``dst``, then append the source's pixel elements.

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    from pydicom.uid import UID

    tmp = dst.with_name(dst.name + ".part")
    ds = header.ds
    ts = UID(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else None
    fast = (
        ts is not None
        and ts.is_transfer_syntax
        and not ts.is_deflated
        and ds.original_encoding == (ts.is_implicit_VR, ts.is_little_endian)
        and ds.original_character_set == ds._character_set
    )
    try:
        with open(tmp, "wb") as out:
            if fast:
                out.write((ds.preamble or b"\0" * 128) + b"DICM" + encode_file_meta(ds.file_meta))
                out.write(encode_dataset(ds, ts.is_implicit_VR, ts.is_little_endian))
            else:
                ds.save_as(out, enforce_file_format=True)
            out.flush()
            if header.tail is not None:
                offset, length = header.tail
                with open(src, "rb") as f:
                    # Appending at the current end: position the destination fd after pydicom's bytes.
                    os.lseek(out.fileno(), 0, os.SEEK_END)
                    copy_range(f.fileno(), out.fileno(), offset, length)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
