"""Import's truncation check: a walk of element and item headers, for every encoding, with anything after Pixel Data.

Files are built byte by byte where pydicom would refuse to write the layout (encapsulated Pixel Data in big endian),
and with pydicom otherwise; pydicom's own shipped files that an earlier check rejected are read as shipped.
"""

import io
import struct
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless,
                         generate_uid)

from dicom_relay.dicom_extent import Malformed, Truncated, check_extent, dataset_start
from dicom_relay.dicom_import import IndexedInstance, Rejected, read_instance

NAME = "Doe^Jane"  # must never appear in a reason
ENCODINGS = {  # transfer syntax: (implicit, little)
    ImplicitVRLittleEndian: (True, True), ExplicitVRLittleEndian: (False, True), ExplicitVRBigEndian: (False, False)}


def _header(tsuid) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsuid
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = NAME, "PID-4711", "OT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _element(tag: int, vr: bytes, value: bytes, implicit: bool, little: bool, undefined: bool = False) -> bytes:
    o = "<" if little else ">"
    length = 0xFFFFFFFF if undefined else len(value)
    head = struct.pack(o + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(o + "L", length) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + vr + b"\0\0" + struct.pack(o + "L", length) + value
    return head + vr + struct.pack(o + "H", length) + value


def _item(tag: int, value: bytes, little: bool, length: int | None = None) -> bytes:
    o = "<" if little else ">"
    return struct.pack(o + "HHL", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def _encapsulated(little: bool, implicit: bool = False) -> bytes:
    bot = struct.pack(("<" if little else ">") + "LL", 0, 24)  # two frames
    items = _item(0xFFFEE000, bot, little) + _item(0xFFFEE000, b"\x01" * 16, little) \
        + _item(0xFFFEE000, b"\x02" * 16, little)
    return _element(0x7FE00010, b"OB", items + _item(0xFFFEE0DD, b"", little), implicit, little, undefined=True)


def _trailing_private(implicit: bool, little: bool) -> bytes:
    """A private block after Pixel Data: creator, a text value, and a private sequence of undefined length."""
    creator = _element(0x00990010, b"LO", b"ACME 1.0", implicit, little)
    text = _element(0x00991001, b"LO", b"after pixels", implicit, little)
    inner = _element(0x00991003, b"LO", b"nested ", implicit, little)
    seq = _element(0x00991002, b"SQ", _item(0xFFFEE000, inner, little, 0xFFFFFFFF) + _item(0xFFFEE00D, b"", little)
                   + _item(0xFFFEE0DD, b"", little), implicit, little, undefined=True)
    return creator + text + seq


def _padding(implicit: bool, little: bool, n: int = 256) -> bytes:
    return _element(0xFFFCFFFC, b"OB", b"\0" * n, implicit, little)


def _write(tmp_path: Path, data: bytes, name: str = "Doe_Jane_0001.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _native(implicit: bool, little: bool) -> bytes:
    return _element(0x7FE00010, b"OB", bytes(range(16)), implicit, little)


@pytest.mark.parametrize("tsuid", list(ENCODINGS), ids=lambda u: u.name.replace(" ", "_"))
@pytest.mark.parametrize("after", ["nothing", "padding", "private", "padding_and_private"])
@pytest.mark.parametrize("pixels", ["native", "encapsulated"])
def test_valid_files_are_accepted_whatever_follows_pixel_data(tmp_path, tsuid, after, pixels):
    implicit, little = ENCODINGS[tsuid]
    body = _native(implicit, little) if pixels == "native" else _encapsulated(little, implicit)
    tail = {"nothing": b"", "padding": _padding(implicit, little), "private": _trailing_private(implicit, little),
            "padding_and_private": _trailing_private(implicit, little) + _padding(implicit, little)}[after]
    path = _write(tmp_path, _header(tsuid) + body + tail)
    result = read_instance(path, path.name)
    assert isinstance(result, IndexedInstance), result


def _cut_cases(implicit: bool, little: bool) -> dict[str, tuple[bytes, int, str]]:
    """name: (file bytes, offset to cut at, expected words in the reason)."""
    enc = _encapsulated(little, implicit)
    pixel_head = 12 if not implicit else 8
    bot_start = pixel_head + 8
    frag1 = bot_start + 8 + 8
    delimiter = len(enc) - 8
    tail = _padding(implicit, little)
    private = _trailing_private(implicit, little)
    return {
        "inside the offset table": (enc, bot_start + 4, "Basic Offset Table"),
        "inside an item header": (enc, bot_start + 8 + 3, "item header"),
        "inside a fragment": (enc, frag1 + 24 + 5, "fragment 2"),
        "inside the delimiter": (enc, delimiter + 5, "Sequence Delimitation Item"),
        "before the delimiter": (enc, delimiter, "Sequence Delimitation Item"),
        "inside native pixel data": (_native(implicit, little), pixel_head + 7, "(7FE0,0010)"),
        "inside trailing padding": (_native(implicit, little) + tail, len(_native(implicit, little)) + 100,
                                    "(FFFC,FFFC)"),
        "inside a trailing private sequence": (enc + private, len(enc) + len(private) - 10, "sequence"),
    }


@pytest.mark.parametrize("tsuid", list(ENCODINGS), ids=lambda u: u.name.replace(" ", "_"))
@pytest.mark.parametrize("case", list(_cut_cases(False, True)))
def test_a_cut_anywhere_is_rejected_as_truncated(tmp_path, tsuid, case):
    implicit, little = ENCODINGS[tsuid]
    body, cut, words = _cut_cases(implicit, little)[case]
    header = _header(tsuid)
    whole = _write(tmp_path, header + body, "whole.dcm")
    assert isinstance(read_instance(whole, whole.name), IndexedInstance)
    path = _write(tmp_path, header + body[:cut])
    result = read_instance(path, path.name)
    assert isinstance(result, Rejected), f"cut {case} was accepted"
    assert result.reason.startswith("is truncated (") and words in result.reason, result.reason
    assert NAME not in result.reason and "Doe" not in result.reason and "PID-4711" not in result.reason


def test_encapsulated_pixel_data_without_items_is_rejected(tmp_path):
    bad = _element(0x7FE00010, b"OB", _item(0xFFFEE000, b"", True) + b"\x10\x00\x10\x00garbage!" + b"\0" * 8,
                   False, True, undefined=True)
    path = _write(tmp_path, _header(ExplicitVRLittleEndian) + bad)
    result = read_instance(path, path.name)
    assert isinstance(result, Rejected) and "should be an Item" in result.reason, result


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_pydicom_files_with_elements_after_pixel_data_are_accepted(tmp_path, name):
    data = Path(get_testdata_file(name)).read_bytes()
    assert not data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"), "the file no longer has elements after Pixel Data"
    assert isinstance(read_instance(Path(get_testdata_file(name)), name), IndexedInstance)
    # ... and the same file cut inside its last fragment is not.
    delimiter = data.rindex(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    cut = _write(tmp_path, data[:delimiter - 3])
    result = read_instance(cut, cut.name)
    assert isinstance(result, Rejected) and "fragment" in result.reason, result


def test_big_endian_encapsulated_walk_and_file_meta_skip():
    """The walk itself, on a big endian data set holding encapsulated Pixel Data (not writable with pydicom)."""
    header = _header(ExplicitVRBigEndian)
    data = header + _encapsulated(False) + _padding(False, False)
    fp = io.BytesIO(data)
    start = dataset_start(fp)
    assert struct.unpack(">H", data[start:start + 2])[0] == 0x0008
    check_extent(fp, len(data), start, implicit=False, little=False)
    cut = data[:len(header) + 12 + 8 + 3]
    with pytest.raises(Truncated, match="Basic Offset Table"):
        check_extent(io.BytesIO(cut), len(cut), start, implicit=False, little=False)
    garbage = header + _element(0x7FE00010, b"OB", _item(0xFFFEE000, b"", False) + _item(0x00100010, b"", False),
                                False, False, undefined=True)
    with pytest.raises(Malformed):
        check_extent(io.BytesIO(garbage), len(garbage), start, implicit=False, little=False)


def _bytes_read() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


def test_import_reads_headers_not_pixel_data(tmp_path):
    """A 64 MB native and a 64 MB encapsulated Pixel Data: import reads kilobytes (measured by the kernel)."""
    header = _header(ExplicitVRLittleEndian)
    native = tmp_path / "native.dcm"
    with open(native, "wb") as fh:
        fh.write(header + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 64 << 20))
        fh.truncate(fh.tell() + (64 << 20))
        fh.seek(0, 2)
        fh.write(_padding(False, True))
    frames = [b"\0" * (1 << 20)] * 64
    encapsulated = tmp_path / "encapsulated.dcm"
    encapsulated.write_bytes(_header(RLELossless) + _element(0x7FE00010, b"OB", encapsulate(frames) + _item(0xFFFEE0DD, b"", True), False, True,
                                                              undefined=True) + _padding(False, True))
    for path in (native, encapsulated):
        before = _bytes_read()
        assert isinstance(read_instance(path, path.name), IndexedInstance)
        assert _bytes_read() - before < 256 * 1024, f"{path.name}: import read the pixel data"


def test_encapsulated_icon_inside_a_sequence_item_is_walked(tmp_path):
    """An Icon Image Sequence item may hold encapsulated Pixel Data of its own (PS3.3 F.7): walked item by item."""
    icon = _encapsulated(True)
    item = _item(0xFFFEE000, icon + _item(0xFFFEE00D, b"", True), True, 0xFFFFFFFF)
    seq = _element(0x00880200, b"SQ", item + _item(0xFFFEE0DD, b"", True), False, True, undefined=True)
    data = _header(RLELossless) + seq + _encapsulated(True) + _padding(False, True)
    path = _write(tmp_path, data)
    assert isinstance(read_instance(path, path.name), IndexedInstance)
    cut = _write(tmp_path, data[:len(data) - 100], "cut.dcm")
    result = read_instance(cut, cut.name)
    assert isinstance(result, Rejected) and "(FFFC,FFFC)" in result.reason, result


def _un_sequence_with_explicit_item() -> bytes:
    """A private UN of undefined length whose item is encoded in explicit VR (PS3.5 6.2.2 says implicit)."""
    inner = _element(0x00091010, b"LO", b"explicit", False, True) + _element(0x00091011, b"UT", b"x" * 300, False, True)
    item = _item(0xFFFEE000, inner + _item(0xFFFEE00D, b"", True), True, 0xFFFFFFFF)
    creator = _element(0x00090010, b"LO", b"ACME 1.0", False, True)
    return creator + _element(0x00091001, b"UN", item + _item(0xFFFEE0DD, b"", True), False, True, undefined=True)


def test_an_item_in_the_other_vr_encoding_is_walked_as_pydicom_reads_it(tmp_path):
    """Walked in the encoding the item is actually in (as pydicom does), so a valid file is not taken for truncated;
    the same file cut in its pixel data still is."""
    data = _header(ExplicitVRLittleEndian) + _un_sequence_with_explicit_item() + _native(False, True)
    path = _write(tmp_path, data)
    assert isinstance(read_instance(path, path.name), IndexedInstance), read_instance(path, path.name)
    cut = _write(tmp_path, data[:-5], "cut.dcm")
    result = read_instance(cut, cut.name)
    assert isinstance(result, Rejected) and result.reason.startswith("is truncated"), result


def test_a_cut_inside_a_header_sequence_is_reported_as_truncated(tmp_path):
    """pydicom's own header read fails on such a file: the walk still says what is wrong with it."""
    data = _header(ExplicitVRLittleEndian) + _un_sequence_with_explicit_item() + _native(False, True)
    cut = _write(tmp_path, data[:len(data) - 60])
    result = read_instance(cut, cut.name)
    assert isinstance(result, Rejected) and result.reason.startswith("is truncated"), result
    assert NAME not in result.reason


@pytest.mark.parametrize("zeros", [1, 7, 8, 500])
def test_zero_bytes_after_the_data_set_are_not_a_cut(tmp_path, zeros):
    """Media written in blocks and some transfer tools pad files with zero bytes; no element is cut short by that.
    (Eight zero bytes read as an element (0000,0000) of length 0, as pydicom reads them.)"""
    data = _header(ExplicitVRLittleEndian) + _native(False, True) + _padding(False, True) + b"\0" * zeros
    path = _write(tmp_path, data)
    assert isinstance(read_instance(path, path.name), IndexedInstance), read_instance(path, path.name)
    bad = _write(tmp_path, data[:-zeros] + b"\x10\x00\x10", "garbage.dcm")
    assert read_instance(bad, bad.name).reason.startswith("is truncated")
