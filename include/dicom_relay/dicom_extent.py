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
* a file that ends inside an element header.

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
MAX_DEPTH = 64  # deeper nesting than this is not a real data set; stop judging rather than recurse on


class Truncated(Exception):
    """The file ends before a value, a fragment or a delimiter that its headers announce. The message has no PHI."""


class Malformed(Exception):
    """Encapsulated Pixel Data whose items cannot be read as items. The message has no PHI."""


class _GiveUp(Exception):
    """A layout the walk does not understand: no verdict (pydicom's read decides)."""


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    def __init__(self, fp: BinaryIO, size: int, little: bool):
        self.fp = fp
        self.size = size
        self.order = "<" if little else ">"

    # -- headers ---------------------------------------------------------------------------------------------
    def _read(self, n: int, what: str) -> bytes:
        data = self.fp.read(n)
        if len(data) < n:
            raise Truncated(f"the file ends inside {what}")
        return data

    def _tag(self, raw: bytes, order: str) -> int:
        group, elem = struct.unpack(order + "HH", raw[:4])
        return group << 16 | elem

    def element_header(self, implicit: bool, order: str, in_item: bool) -> tuple[int, bytes | None, int] | None:
        """(tag, VR or None, length) of the next element, or None at the end of the file."""
        head = self.fp.read(8)
        if not head:
            return None
        if len(head) < 8:
            raise Truncated("the file ends inside an element header of a sequence item" if in_item
                            else "the file ends inside the header of an element")
        tag = self._tag(head, order)
        if tag >> 16 == 0xFFFE:  # Item and delimiters: always tag + 4-byte length, never a VR (PS3.5 7.5)
            return tag, None, struct.unpack(order + "L", head[4:8])[0]
        vr = head[4:6]
        if implicit or not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            # Implicit VR, or an explicit VR data set that switches to implicit VR (some writers do, in sequences).
            return tag, None, struct.unpack(order + "L", head[4:8])[0]
        if vr in LONG_VRS:
            return tag, vr, struct.unpack(order + "L", self._read(4, f"the header of {_tag_text(tag)}"))[0]
        return tag, vr, struct.unpack(order + "H", head[6:8])[0]

    def skip(self, length: int, what: str) -> None:
        start = self.fp.tell()
        if start + length > self.size:
            raise Truncated(f"{what} runs past the end of the file ({length} bytes declared, "
                            f"{self.size - start} left)")
        self.fp.seek(start + length)

    # -- structures ------------------------------------------------------------------------------------------
    def data_set(self, implicit: bool, order: str, depth: int, in_item: bool) -> None:
        """Walk elements up to the end of the file (top level) or to the Item Delimitation Item (in an item)."""
        if depth > MAX_DEPTH:
            raise _GiveUp
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
                self.skip(length, f"the value of {_tag_text(tag)}")
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
            raw = self.fp.read(8)
            if not raw:
                raise Truncated("the file ends inside a sequence (no Sequence Delimitation Item)")
            if len(raw) < 8:
                raise Truncated("the file ends inside an item header of a sequence")
            tag = self._tag(raw, order)
            length = struct.unpack(order + "L", raw[4:8])[0]
            if tag == SEQUENCE_DELIMITER:
                return
            if tag != ITEM:
                raise _GiveUp
            if length == UNDEFINED_LENGTH:
                self.data_set(implicit, order, depth + 1, in_item=True)
            else:
                self.skip(length, "a sequence item")

    def encapsulated(self, order: str) -> None:
        """Encapsulated Pixel Data (PS3.5 A.4): Basic Offset Table item, fragment items, Sequence Delimitation Item."""
        index = 0
        while True:
            what = "the Basic Offset Table item" if index == 0 else f"pixel data fragment {index}"
            raw = self.fp.read(8)
            if not raw:
                raise Truncated("the file ends before the Sequence Delimitation Item of the encapsulated pixel data")
            if len(raw) < 8:
                raise Truncated("the file ends inside an item header or the Sequence Delimitation Item "
                                "of the encapsulated pixel data")
            tag = self._tag(raw, order)
            length = struct.unpack(order + "L", raw[4:8])[0]
            if tag == SEQUENCE_DELIMITER:
                if index == 0:
                    raise Malformed("its encapsulated pixel data has no Basic Offset Table item")
                return
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise Malformed(f"its encapsulated pixel data holds {_tag_text(tag)} where item {index} "
                                f"should be an Item (FFFE,E000) of defined length")
            self.skip(length, what)
            index += 1


def check_extent(fp: BinaryIO, size: int, dataset_start: int, implicit: bool, little: bool) -> None:
    """Raise :class:`Truncated` (or :class:`Malformed`) unless every value of the data set ends inside the file.

    ``fp`` is a binary file of ``size`` bytes; the data set (after the File Meta Information) starts at
    ``dataset_start`` in the given encoding. A layout this walk does not understand gives no verdict.
    """
    walker = _Walker(fp, size, little)
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
