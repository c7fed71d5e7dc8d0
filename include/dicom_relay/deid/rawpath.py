"""The fast path of :meth:`Deidentifier.deidentify_file`: de-identification on the raw bytes of the header.

For the common case (a Part 10 file in explicit or implicit VR little endian, native or encapsulated pixel data,
options that need no text cleaner and no safe-private list) the file is not parsed by pydicom at all:

* the header (everything before the pixel elements) is read with one ``pread`` and walked element by element
  with ``struct``, sequences and items (defined or undefined length) included, at every depth;
* every element gets the action :func:`dicom_relay.deid.decide.decide` gives it, as on the pydicom path
  (``Deidentifier._raw_walk`` applies it); kept elements are copied as bytes, changed ones re-encoded the way
  pydicom writes them, sequences re-framed keeping their defined/undefined lengths;
* the file meta is rebuilt as :meth:`Deidentifier._fix_file_meta` does, the pixel elements are appended with
  ``copy_file_range`` from the same file descriptor.

Anything unusual raises :class:`Fallback` before a byte is written and the caller uses the pydicom path
(big endian, deflate, no Part 10 header, unsorted or duplicate tags, a standard attribute stored as UN, an
undefined-length element that is not a sequence, a non-ASCII value the engine would have to decode or write,
elements after the pixel data, ...). ``tests/unit/deid/test_rawpath.py`` checks that both paths give the same
file, element by element, on the planted-PHI corpus and on pydicom's test files.
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from dicom_relay.deid import dictionary, fastio
from dicom_relay.deid.vr import LONG_VRS, VALID_VRS, dict_vr

# No pydicom here (dictionary.py says why): a dummy value that is not text is encoded by pydicom, imported then.


class Fallback(Exception):
    """The fast path does not apply to this file: use the pydicom path."""


class _NeedMore(Exception):
    """The header continues past the bytes read so far."""


_TAG = struct.Struct("<HH").unpack_from
_IMPLICIT = struct.Struct("<HHL").unpack_from
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<L").unpack_from
_HDR_IMPLICIT = struct.Struct("<HHL").pack
_HDR_SHORT = struct.Struct("<HH2sH").pack
_HDR_LONG = struct.Struct("<HH2sHL").pack
_ITEM_HDR = struct.Struct("<HHL").pack

UNDEF = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_VR_INFO = {v: (v.decode(), v in LONG_VRS) for v in VALID_VRS}  # VR bytes -> (VR, 4-byte length?)
ITEM_UNDEF_HDR = _ITEM_HDR(0xFFFE, 0xE000, UNDEF)
ITEM_DELIM = _ITEM_HDR(0xFFFE, 0xE00D, 0)
SEQ_DELIM = _ITEM_HDR(0xFFFE, 0xE0DD, 0)
FIRST_READ = 1 << 14  # most headers end within 16 KB (a CT's: 4 KB); a longer one is read again, 4 times more

SOP_CLASS, SOP_INSTANCE, STUDY_UID, SERIES_UID = 0x00080016, 0x00080018, 0x0020000D, 0x0020000E
MODALITY, BURNED_IN = 0x00080060, 0x00280301


@lru_cache(maxsize=64)
def transfer_syntax_encoding(ts: str) -> bool | None:
    """``implicit`` (True/False) for a little endian, non-deflated transfer syntax, else None."""
    known = dictionary.transfer_syntax(ts)
    if known is None:
        return None
    implicit, little, deflated, _ = known
    if deflated or not little:
        return None
    return implicit


class Elem(NamedTuple):
    """One element of the header as read: where its bytes are, and its items when it is a sequence.

    A tuple, built with ``_new_elem`` (no Python call): a study makes tens of thousands of them, and the garbage
    collector stops tracking a tuple of plain values, so the headers an index keeps cost it nothing."""

    tag: int
    fvr: bytes | None
    vr: str
    start: int
    vstart: int
    vend: int
    items: list | None
    undef: bool


_new_elem = tuple.__new__


class Reader:
    """Parses a little endian dataset from ``buf`` (explicit or implicit VR); raises Fallback on anything odd."""

    def __init__(self, buf: bytes, implicit: bool, complete: bool, dict_vr):
        self.buf, self.implicit, self.complete, self.dict_vr = buf, implicit, complete, dict_vr
        self.n = len(buf)

    def _need(self, end: int) -> None:
        if end > self.n:
            raise Fallback if self.complete else _NeedMore

    def dataset(self, pos: int, end: int | None, top: bool) -> tuple[list[Elem], int]:
        """Elements from ``pos`` to ``end`` (None: to the item delimiter; top: to the pixel data or the end)."""
        buf, implicit, dict_vr, n = self.buf, self.implicit, self.dict_vr, self.n
        out: list[Elem] = []
        add = out.append
        last = -1
        limit = n if end is None else end
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise Fallback
                return out, pos
            if pos + 8 > n:
                if top and pos == n and self.complete:
                    return out, pos
                self._need(pos + 8)
            if implicit:
                g, e, length = _IMPLICIT(buf, pos)
                vstart = pos + 8
                fvr = None
                tag = g << 16 | e
            else:
                g, e, fvr, length = _EXPLICIT(buf, pos)
                tag = g << 16 | e
                info = _VR_INFO.get(fvr)
                if info is None:
                    if g == 0xFFFE:  # an item delimiter or a stray item tag: handled below
                        info = ("", False)
                    else:
                        raise Fallback
                vr, long = info
                if long:
                    if pos + 12 > n:
                        self._need(pos + 12)
                    if length:
                        raise Fallback  # reserved bytes not zero
                    length = _U32(buf, pos + 8)[0]
                    vstart = pos + 12
                else:
                    vstart = pos + 8
            if tag == ITEM_END and end is None and not top:
                return out, pos + 8
            if top and tag in PIXEL_TAGS:
                return out, pos
            if tag <= last or g == 0xFFFE or g < 8 and top or g in (0, 2) and not top:
                raise Fallback
            last = tag
            if implicit:
                vr = dict_vr(tag)
            elif vr == "UN":
                vr = dict_vr(tag)
                if vr != "UN" and not g & 1:
                    raise Fallback  # a standard attribute stored as UN: pydicom's conversion rules apply
            if length == UNDEF:
                if vr != "SQ":
                    if not (implicit and vr == "UN"):
                        raise Fallback
                    self._need(vstart + 4)
                    ig, ie = _TAG(buf, vstart)
                    if (ig << 16 | ie) != ITEM:
                        raise Fallback
                    vr = "SQ"
                items, vend = self.sequence(vstart, None)
                add(_new_elem(Elem, (tag, fvr, vr, pos, vstart, vend, items, True)))
                pos = vend
                continue
            vend = vstart + length
            if vend > n:
                self._need(vend)
            if vend > limit:
                raise Fallback
            if vr == "SQ":
                items, _ = self.sequence(vstart, vend)
                add(_new_elem(Elem, (tag, fvr, vr, pos, vstart, vend, items, False)))
            else:
                add(_new_elem(Elem, (tag, fvr, vr, pos, vstart, vend, None, False)))
            pos = vend

    def sequence(self, pos: int, end: int | None) -> tuple[list, int]:
        """Items of a sequence value from ``pos``: ``[(undefined length item?, elements)]`` and the end."""
        buf = self.buf
        items = []
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise Fallback
                return items, pos
            self._need(pos + 8)
            g, e = _TAG(buf, pos)
            tag = g << 16 | e
            ilen = _U32(buf, pos + 4)[0]
            if tag == SEQ_END and end is None:
                return items, pos + 8
            if tag != ITEM:
                raise Fallback
            pos += 8
            if ilen == UNDEF:
                elems, pos = self.dataset(pos, None, False)
                items.append((True, elems))
            else:
                self._need(pos + ilen)
                elems, pos = self.dataset(pos, pos + ilen, False)
                items.append((False, elems))


def ascii_value(buf: bytes, el: Elem) -> str:
    """The value as the engine's ``_ascii_value`` sees a raw element."""
    v = buf[el.vstart : el.vend]
    return v.decode("ascii", "replace").rstrip("\x00 ").strip() if v else ""


def ascii_text(buf: bytes, el: Elem) -> str:
    """A text value (all its values, backslashes kept) as pydicom decodes it; Fallback unless it is ASCII."""
    v = buf[el.vstart : el.vend]
    if not v.isascii() or b"\x1b" in v:
        raise Fallback
    return v.decode("ascii").rstrip("\x00 ")


def text_value(buf: bytes, el: Elem) -> str:
    """A single-valued ASCII text value as pydicom decodes it; Fallback when it is not that simple."""
    v = buf[el.vstart : el.vend]
    if not v.isascii() or b"\\" in v or b"\x1b" in v:
        raise Fallback
    return v.decode("ascii").rstrip("\x00 ")


def frame(tag: int, vr: bytes | None, value: bytes, implicit: bool) -> bytes:
    """One element as pydicom writes it (value already padded)."""
    n = len(value)
    if implicit:
        return _HDR_IMPLICIT(tag >> 16, tag & 0xFFFF, n) + value
    if vr in LONG_VRS:
        return _HDR_LONG(tag >> 16, tag & 0xFFFF, vr, 0, n) + value
    if n > 0xFFFF:
        raise Fallback
    return _HDR_SHORT(tag >> 16, tag & 0xFFFF, vr, n) + value


def padded(text: str, vr: str) -> bytes:
    if not text.isascii():
        raise Fallback
    b = text.encode("ascii")
    if len(b) & 1:
        b += b"\x00" if vr == "UI" else b" "
    return b


def encode_new(tag: int, vr: str, value, implicit: bool) -> bytes:
    """A new element (a dummy value) as pydicom writes a DataElement of that VR and value."""
    if isinstance(value, str):
        return frame(tag, vr.encode(), padded(value, vr), implicit)
    from pydicom.dataelem import DataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    buf = DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = implicit, True
    write_data_element(buf, DataElement(tag, vr, value))
    return buf.getvalue()


def encode_sequence(tag: int, items: list[tuple[bool, list[bytes]]], undef: bool, implicit: bool) -> bytes:
    body = []
    for undef_item, chunks in items:
        content = b"".join(chunks)
        if undef_item:
            body.append(ITEM_UNDEF_HDR + content + ITEM_DELIM)
        else:
            body.append(_ITEM_HDR(0xFFFE, 0xE000, len(content)) + content)
    value = b"".join(body)
    length = len(value)
    if undef:
        value += SEQ_DELIM
        length = UNDEF
    if implicit:
        return _HDR_IMPLICIT(tag >> 16, tag & 0xFFFF, length) + value
    return _HDR_LONG(tag >> 16, tag & 0xFFFF, b"SQ", 0, length) + value


def chunk_value(chunk: bytes, implicit: bool) -> str:
    """The decoded ASCII value of an encoded element (UIDs of the result)."""
    if implicit:
        off = 8
    else:
        off = 12 if chunk[4:6] in LONG_VRS else 8
    return chunk[off:].decode("ascii", "replace").rstrip("\x00 ").strip()


def read_meta(buf: bytes) -> tuple[dict[int, str], int]:
    """Part 10 preamble and file meta (always explicit VR little endian): ``({tag: value}, dataset offset)``."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise Fallback
    pos = 132
    meta: dict[int, str] = {}
    n = len(buf)
    while pos + 8 <= n:
        g, e = _TAG(buf, pos)
        if g != 2:
            return meta, pos
        fvr = buf[pos + 4 : pos + 6]
        if fvr in LONG_VRS:
            length = _U32(buf, pos + 8)[0]
            vstart = pos + 12
        elif fvr in VALID_VRS:
            length = _U16(buf, pos + 6)[0]
            vstart = pos + 8
        else:
            raise Fallback
        if length == UNDEF or vstart + length > n:
            raise Fallback
        if fvr == b"UI":
            meta[g << 16 | e] = buf[vstart : vstart + length].decode("ascii", "replace").rstrip("\x00 ")
        pos = vstart + length
    raise Fallback


def encode_meta(sop_class: str, sop_instance: str, ts: str) -> bytes:
    """The file meta :meth:`Deidentifier._fix_file_meta` builds, as ``write_file_meta_info`` writes it."""
    body = (
        frame(0x00020001, b"OB", b"\x00\x01", False)
        + frame(0x00020002, b"UI", padded(sop_class, "UI"), False)
        + frame(0x00020003, b"UI", padded(sop_instance, "UI"), False)
        + frame(0x00020010, b"UI", padded(ts, "UI"), False)
        + frame(0x00020012, b"UI", padded(dictionary.implementation_uid(), "UI"), False)
        + frame(0x00020013, b"SH", padded("DICOM_RELAY_01", "SH"), False)
    )
    return frame(0x00020000, b"UL", struct.pack("<L", len(body)), False) + body


def file_key(st: os.stat_result) -> tuple[int, ...]:
    """What says a file is still the one that was read: same inode, size, modification and change times."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_file(fd: int) -> tuple[bytes, dict[int, str], int, list[Elem], int, bool, int]:
    """(header bytes, meta, dataset offset, top-level elements, pixel offset or -1, implicit, file size)."""
    size = os.fstat(fd).st_size
    want = FIRST_READ
    while True:
        buf = os.pread(fd, min(want, size), 0)
        complete = len(buf) >= size
        meta, start = read_meta(buf)
        ts = meta.get(0x00020010)
        if not ts:
            raise Fallback
        implicit = transfer_syntax_encoding(ts)
        if implicit is None:
            raise Fallback
        try:
            elems, end = Reader(buf, implicit, complete, dict_vr).dataset(start, None, True)
        except _NeedMore:
            if complete:
                raise Fallback from None
            want *= 4
            continue
        return buf, meta, start, elems, (end if end < size else -1), implicit, size


def find_tail(fd: int, offset: int, size: int, implicit: bool, buf: bytes = b"") -> tuple[int, int] | None:
    """(offset, length) of the pixel elements that start at ``offset`` and end the file (trailing padding
    aside); Fallback if anything else follows them."""
    if offset < 0:
        return None
    if offset + 12 <= len(buf):
        # The common case without reading anything: one Pixel Data element of defined length ending the file.
        g, e = _TAG(buf, offset)
        if implicit:
            length, hdr = _U32(buf, offset + 4)[0], 8
        elif buf[offset + 4 : offset + 6] in LONG_VRS:
            length, hdr = _U32(buf, offset + 8)[0], 12
        else:
            length, hdr = _U16(buf, offset + 6)[0], 8
        if length != UNDEF and offset + hdr + length == size and (g << 16 | e) in PIXEL_TAGS:
            return offset, size - offset
    with os.fdopen(os.dup(fd), "rb") as f:
        try:
            end = fastio.scan_pixel_elements(f, offset, size, True, implicit)
        except (fastio.NeedsFullRead, struct.error):
            raise Fallback from None
    return offset, end - offset


def write_output(dst: Path, head: bytes, src_fd: int, tail: tuple[int, int] | None) -> None:
    """``head`` then the source's pixel elements, into a temporary name renamed into place."""
    tmp = dst.with_name(dst.name + ".part")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies, as with open()
    try:
        try:
            view = memoryview(head)
            while view:
                view = view[os.write(out, view) :]
            if tail is not None:
                fastio.copy_range(src_fd, out, tail[0], tail[1])
        finally:
            os.close(out)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
