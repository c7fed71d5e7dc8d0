"""Decode an instance's pixel data, blank rectangles frame by frame, write it back (PS3.5 Section 8 and Annex A).

:class:`Frames` holds the *stored* pixel values of every frame (PS3.3 C.7.6.3), not the displayed ones, so that an
unchanged pixel is written back with exactly the value it had: blanking never goes through a colour or grey-scale
conversion. :meth:`Frames.display` derives the picture a viewer shows (for OCR); :meth:`Frames.blank` writes the
stored value that *displays* black whatever the window: MONOCHROME2 the lowest representable value (signed if
Pixel Representation is 1), MONOCHROME1 the highest (both swapped by a negative Rescale Slope), RGB 0, YBR_FULL*
Y=0 with neutral chroma, PALETTE COLOR the index whose palette entry is darkest.

Transfer syntax written by :meth:`Frames.encode_into` (the source's when a lossless encoder for it exists):

=====================================================  ===============================================================
source                                                 written
=====================================================  ===============================================================
Implicit / Explicit VR LE, Explicit VR BE, Deflated    the same (native, same Planar Configuration, byte order, 1-bit
                                                       packing; YBR_FULL_422 re-subsampled, so it stays YBR_FULL_422)
RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless     the same, pydicom 3's encoders (pylibjpeg-rle / pydicom,
                                                       pyjpegls, pylibjpeg-openjpeg)
JPEG Lossless .57 and SV1 .70                          JPEG-LS Lossless (.80): pydicom 3 has no JPEG Lossless encoder
                                                       and neither the venv nor Debian 12 has one (libjpeg-turbo 2.1
                                                       predates lossless encoding); JPEG-LS is lossless too, encodes
                                                       faster and smaller than .70 (CharLS), and DCMTK, GDCM, Orthanc
                                                       and pydicom all decode it
HTJ2K Lossless (.201, .202)                            JPEG 2000 Lossless (.90): no HTJ2K encoder; .90 is older and
                                                       more widely decoded
JPEG Baseline .50 (and Extended .51 with 8 bits)       JPEG Baseline .50 re-encoded with Pillow (libjpeg-turbo) using
                                                       the frame's own quantisation tables and chroma sub-sampling,
                                                       so the second generation adds only rounding error (measured in
                                                       the tests) and the size stays about the same
JPEG Extended .51, 12 bits                             JPEG-LS Lossless (.80): no 12-bit JPEG encoder; no further loss
JPEG-LS Near-Lossless .81                              the same, with the source's NEAR (read from its scan header),
                                                       so the error bound the source promised still holds per step
JPEG 2000 .91 (and HTJ2K .203)                         JPEG 2000 .91 at the compression ratio of the source frame
=====================================================  ===============================================================

Why decode / re-encode and not compressed-domain (DCT block) cleaning for JPEG Baseline: block cleaning only
exists for baseline Huffman JPEG (none of the other lossy syntaxes), would need a hand-written entropy
coder (no library in the venv or Debian does it: ``jpegtran -wipe`` greys instead of blackening and runs as a
process per frame), and blanks whole 8x8/16x16 blocks; with the source quantisation tables the re-encoded image
differs from the decoded source by a level or two (see the tests), which is invisible and far below the
loss the source already had.

When a lossy step is performed, Lossy Image Compression becomes "01" and Lossy Image Compression Ratio / Method
(0028,2112 / 0028,2114) get one more value each (PS3.3 C.7.6.1.1.5); when the source's own lossy step was not
recorded it is recorded first. Photometric Interpretation, Planar Configuration and the offset tables follow the
written syntax (Basic Offset Table always; Extended Offset Table only when a frame offset exceeds 2**32 - 1).
If an encoder refuses the data (an unusual bit depth, for instance), Explicit VR Little Endian native is written:
lossless and readable by everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from dicom_relay.deid.errors import DeidError
from dicom_relay.deid.pixels.display import Display, black_and_display
from dicom_relay.deid.pixels.writer import NATIVE, write_pixels

Box = tuple[int, int, int, int]
"""x0, y0, x1, y1: a half-open rectangle in the pixel coordinates of one frame (column, row)."""


class PixelCodecError(DeidError):
    """Pixel data could not be decoded or written back; the message names the transfer syntax and the reason."""


@dataclass
class Frames:
    """Decoded pixel data of one instance, editable frame by frame, written back losslessly.

    ``stored`` is (frames, rows, columns[, samples]) in the colour space ``photometric`` (the decoder's output:
    YBR_FULL for sub-sampled native data, RGB for JPEG 2000 data stored as YBR_RCT / YBR_ICT).
    """

    stored: np.ndarray
    photometric: str
    source_syntax: UID
    source_photometric: str
    bits_stored: int
    signed: bool
    black: np.ndarray
    fragments: list[bytes] = field(default_factory=list)
    _display: Display | None = None  # stored frame -> uint8 picture, chosen once per instance
    _even_columns: bool = False  # YBR_FULL_422 native: a blanked box covers whole pairs of pixels

    @property
    def count(self) -> int:
        """Number of frames."""
        return self.stored.shape[0]

    @classmethod
    def decode(cls, ds: pydicom.Dataset) -> Frames:
        """Decode every frame of ``ds``; :class:`PixelCodecError` when pydicom has no working decoder for it."""
        meta = ds.get("file_meta")
        syntax = UID(meta.get("TransferSyntaxUID", "")) if meta is not None else UID("")
        if "PixelData" not in ds:
            raise PixelCodecError("no Pixel Data (7FE0,0010) to clean (float or double float pixel data excluded)")
        if not syntax:
            raise PixelCodecError("no Transfer Syntax UID (0002,0010): pixel data cannot be decoded")
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise PixelCodecError(f"no pixel data decoder for transfer syntax {syntax} ({syntax.name})") from None
        if not decoder.is_available:
            raise PixelCodecError(f"decoder plugins for {syntax} ({syntax.name}) are not installed")
        try:
            arr, props = decoder.as_array(ds, raw=True)
        except Exception as exc:  # decoders raise RuntimeError, ValueError, struct/KeyError on damaged data
            raise PixelCodecError(f"{syntax.name} pixel data not decodable: {type(exc).__name__}") from None
        frames_in = int(props.get("number_of_frames") or 1)
        samples = int(props["samples_per_pixel"])
        if frames_in == 1:
            arr = arr[np.newaxis]
        if not arr.flags.writeable:
            arr = arr.copy()
        fragments = []
        if syntax.is_encapsulated:
            fragments = list(generate_frames(ds.PixelData, number_of_frames=frames_in))
        pi = str(props["photometric_interpretation"])
        bits_stored = int(props["bits_stored"])
        signed = int(props.get("pixel_representation", 0)) == 1
        frames = cls(stored=arr, photometric=pi, source_syntax=syntax,
                     source_photometric=str(ds.get("PhotometricInterpretation", pi)), bits_stored=bits_stored,
                     signed=signed, black=np.zeros(samples, arr.dtype), fragments=fragments)
        frames._even_columns = syntax in NATIVE and frames.source_photometric == "YBR_FULL_422"
        try:
            frames.black, frames._display = black_and_display(ds, arr, pi, bits_stored, signed)
        except ValueError as exc:
            raise PixelCodecError(f"{syntax.name}: {exc}") from None
        return frames

    def display(self, i: int) -> np.ndarray:
        """Frame ``i`` as a viewer shows it: uint8 (rows, columns) grey or (rows, columns, 3) RGB."""
        return self._display(self.stored[i])

    def blank(self, i: int, boxes: Iterable[Box]) -> int:
        """Fill ``boxes`` of frame ``i`` with the stored value that displays black; return the pixels changed."""
        frame = self.stored[i]
        rows, cols = frame.shape[:2]
        changed = 0
        for x0, y0, x1, y1 in boxes:
            x0, x1 = max(0, int(x0)), min(cols, int(x1))
            y0, y1 = max(0, int(y0)), min(rows, int(y1))
            if self._even_columns:  # keep whole chroma pairs so the re-sub-sampled box is black, not tinted
                x0, x1 = x0 - x0 % 2, min(cols, x1 + x1 % 2)
            if x0 >= x1 or y0 >= y1:
                continue
            region = frame[y0:y1, x0:x1]
            differs = region != (self.black if region.ndim == 3 else self.black[0])
            changed += int(np.count_nonzero(differs.any(axis=-1) if region.ndim == 3 else differs))
            region[...] = self.black if region.ndim == 3 else self.black[0]
        return changed

    def encode_into(self, ds: pydicom.Dataset) -> str:
        """Write Pixel Data and the attributes that must follow into ``ds``; return the transfer syntax UID written."""
        try:
            return str(write_pixels(ds, self.stored, self.photometric, self.source_syntax, self.bits_stored,
                                    self.fragments))
        except Exception as exc:  # noqa: BLE001 - any encoder failure becomes one clear, PHI-free error
            raise PixelCodecError(f"{self.source_syntax.name} pixel data could not be written back: "
                                  f"{type(exc).__name__}") from None
