"""Does every value of a DICOM file end inside the file? A walk of element headers that never reads a value.

Import reads the header only (pydicom's ``stop_before_pixels``), so it cannot see a file cut short in its pixel
data or in the elements after it. This module walks the whole data set by element headers and seeks past each
value (PS3.5 7.1): for a 500-slice CT it reads a few KB per file, never the pixel data itself.

What counts as truncated (PS3.5 7.1, 7.5, A.4):

* a value of defined length that runs past the end of the file (any element, Pixel Data included);
* in encapsulated Pixel Data (undefined length), an Item (FFFE,E000) -- the Basic Offset Table or a fragment --
  whose value runs past the end, or a file that ends before, or inside, the Sequence Delimitation Item
  (FFFE,E0DD);
* in a sequence of undefined length, a file that ends before its Sequence Delimitation Item;
* a file that ends inside an element header (other than in zero bytes after the data set, which some media and
  transfer tools append).

Anything may follow Pixel Data (Data Set Trailing Padding (FFFC,FFFC), private elements, overlays written after
the pixels): it is walked like any other element. A layout the walk does not understand (a sequence item that
is not an Item, an implausibly deep nesting) ends the walk without a verdict; pydicom's own read remains the
judge of such files. Encapsulated Pixel Data holding something other than Items is reported: no decoder can
read it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
KNOWN_VRS = LONG_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
MAX_DEPTH = 64  # deeper nesting than this is not a real data set; stop judging rather than recurse on


class Truncated(Exception):
    """The file ends before a value, a fragment or a delimiter that its headers announce. The message has no PHI."""


class Malformed(Exception):
    """Encapsulated Pixel Data whose items cannot be read as items. The message has no PHI."""


class _GiveUp(Exception):
    """A layout the walk does not understand: no verdict (pydicom's read decides)."""


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_STRUCTS = {order: (struct.Struct(order + "HHL"), struct.Struct(order + "HH2sH"), struct.Struct(order + "L"))
            for order in "<>"}


class _Walker:
    def __init__(self, fp: BinaryIO, size: int, little: bool, start: int):
        self.fp = fp
        self.size = size
        self.order = "<" if little else ">"
        self.pos = start  # kept here rather than asked of the file: tell() is a call per element

    # -- headers ---------------------------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        data = self.fp.read(n)
        self.pos += len(data)
        return data

    def element_header(self, implicit: bool, order: str, in_item: bool) -> tuple[int, bytes | None, int] | None:
        """(tag, VR or None, length) of the next element, or None at the end of the file."""
        head = self._read(8)
        if not head:
            return None
        if len(head) < 8:
            if not in_item and not head.strip(b"\0"):
                return None  # zero bytes after the data set: media or transfer padding, no element cut short
            raise Truncated("the file ends inside an element header of a sequence item" if in_item
                            else "the file ends inside the header of an element")
        tag_length, explicit, long_length = _STRUCTS[order]
        group, elem, length32 = tag_length.unpack(head)
        tag = group << 16 | elem
        vr = head[4:6]
        if group == 0xFFFE or implicit or not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            # Items and delimiters never have a VR (PS3.5 7.5); implicit VR; or an explicit VR data set that
            # switches to implicit VR (some writers do, in sequences).
            return tag, None, length32
        if vr in LONG_VRS:
            extra = self._read(4)
            if len(extra) < 4:
                raise Truncated(f"the file ends inside the header of {_tag_text(tag)}")
            return tag, vr, long_length.unpack(extra)[0]
        return tag, vr, explicit.unpack(head)[3]

    def item_header(self, order: str) -> tuple[int, int] | None:
        """(tag, length) of an Item or delimiter header; None at the end of the file; raises if cut inside."""
        raw = self._read(8)
        if not raw:
            return None
        if len(raw) < 8:
            raise Truncated("")
        group, elem, length = _STRUCTS[order][0].unpack(raw)
        return group << 16 | elem, length

    def _encoding_found(self, implicit: bool) -> bool:
        """Whether the data set starting here is implicit VR, judged from its first element like pydicom does.

        Writers exist that encode a sequence item (often inside a UN of undefined length) or a whole data set in
        the other VR encoding than the transfer syntax says; read with the wrong one, a VR and a 2-byte length
        would be taken for a 4-byte length and the file for truncated.
        """
        head = self.fp.read(8)
        self.fp.seek(self.pos)
        if len(head) < 8 or head[:2] == b"\xfe\xff" or head[:2] == b"\xff\xfe":
            return implicit
        return head[4:6] not in KNOWN_VRS

    def skip(self, length: int, tag: int | None = None, what: str | None = None) -> None:
        end = self.pos + length
        if end > self.size:
            what = what or f"the value of {_tag_text(tag)}"
            raise Truncated(f"{what} runs past the end of the file ({length} bytes declared, "
                            f"{self.size - self.pos} left)")
        if length:
            self.fp.seek(end)
            self.pos = end

    # -- structures ------------------------------------------------------------------------------------------
    def data_set(self, implicit: bool, order: str, depth: int, in_item: bool) -> None:
        """Walk elements up to the end of the file (top level) or to the Item Delimitation Item (in an item)."""
        if depth > MAX_DEPTH:
            raise _GiveUp
        implicit = self._encoding_found(implicit)
        while True:
            header = self.element_header(implicit, order, in_item)
            if header is None:
                if in_item:
                    raise Truncated("the file ends inside a sequence item (no Item Delimitation Item)")
                return
            tag, vr, length = header
            if tag == ITEM_DELIMITER and in_item:
                return
            if tag >> 16 == 0xFFFE:
                raise _GiveUp  # an item or delimiter out of place
            if length != UNDEFINED_LENGTH:
                self.skip(length, tag)
            elif tag == PIXEL_DATA and vr in (None, b"OB", b"OW"):
                self.encapsulated(order)  # top level, or an Icon Image Sequence item's compressed icon
            elif vr == b"UN":
                # UN of undefined length holds a sequence encoded in Implicit VR Little Endian (PS3.5 6.2.2).
                self.sequence(True, "<", depth)
            elif vr in (None, b"SQ"):
                self.sequence(implicit, order, depth)
            else:
                raise _GiveUp  # an undefined length where the VR allows none

    def sequence(self, implicit: bool, order: str, depth: int) -> None:
        """Items of a sequence of undefined length, up to its Sequence Delimitation Item."""
        while True:
            try:
                header = self.item_header(order)
            except Truncated:
                raise Truncated("the file ends inside an item header of a sequence") from None
            if header is None:
                raise Truncated("the file ends inside a sequence (no Sequence Delimitation Item)")
            tag, length = header
            if tag == SEQUENCE_DELIMITER:
                return
            if tag != ITEM:
                raise _GiveUp
            if length == UNDEFINED_LENGTH:
                self.data_set(implicit, order, depth + 1, in_item=True)
            else:
                self.skip(length, what="a sequence item")

    def encapsulated(self, order: str) -> None:
        """Encapsulated Pixel Data (PS3.5 A.4): Basic Offset Table item, fragment items, Sequence Delimitation Item."""
        index = 0
        while True:
            try:
                header = self.item_header(order)
            except Truncated:
                raise Truncated("the file ends inside an item header or the Sequence Delimitation Item "
                                "of the encapsulated pixel data") from None
            if header is None:
                raise Truncated("the file ends before the Sequence Delimitation Item of the encapsulated pixel data")
            tag, length = header
            if tag == SEQUENCE_DELIMITER:
                if index == 0:
                    raise Malformed("its encapsulated pixel data has no Basic Offset Table item")
                return
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise Malformed(f"its encapsulated pixel data holds {_tag_text(tag)} where item {index} "
                                f"should be an Item (FFFE,E000) of defined length")
            self.skip(length, what="the Basic Offset Table item" if index == 0 else f"pixel data fragment {index}")
            index += 1


def check_extent(fp: BinaryIO, size: int, dataset_start: int, implicit: bool, little: bool) -> None:
    """Raise :class:`Truncated` (or :class:`Malformed`) unless every value of the data set ends inside the file.

    ``fp`` is a binary file of ``size`` bytes; the data set (after the File Meta Information) starts at
    ``dataset_start`` in the given encoding. A layout this walk does not understand gives no verdict.
    """
    walker = _Walker(fp, size, little, dataset_start)
    fp.seek(dataset_start)
    try:
        walker.data_set(implicit, walker.order, 0, in_item=False)
    except _GiveUp:
        return


def dataset_start(fp: BinaryIO) -> int:
    """Offset of the data set: after the preamble and 'DICM' prefix if present, and after the group 0002 elements.

    The File Meta Information is Explicit VR Little Endian (PS3.10 7.1); files written without a preamble, or with
    the meta group in implicit VR, exist in the wild and are handled like pydicom handles them.
    """
    fp.seek(0)
    head = fp.read(132)
    pos = 132 if head[128:132] == b"DICM" else 0
    fp.seek(pos)
    while True:
        raw = fp.read(8)
        if len(raw) < 8 or struct.unpack("<H", raw[:2])[0] != 0x0002:
            return pos
        vr = raw[4:6]
        if 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
            if vr in LONG_VRS:
                extra = fp.read(4)
                if len(extra) < 4:
                    return pos
                length, header = struct.unpack("<L", extra)[0], 12
            else:
                length, header = struct.unpack("<H", raw[6:8])[0], 8
        else:
            length, header = struct.unpack("<L", raw[4:8])[0], 8
        if length == UNDEFINED_LENGTH:
            return pos  # not a meta element we can skip: let the data set walk judge from here
        pos += header + length
        fp.seek(pos)
