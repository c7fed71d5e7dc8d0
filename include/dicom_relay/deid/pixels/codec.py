"""Decode an instance's pixel data, blank rectangles frame by frame, write it back (PS3.5 Section 8 and Annex A).

:class:`Frames` holds the *stored* pixel values of every frame (PS3.3 C.7.6.3), not the displayed ones, so an
unchanged pixel is written back with exactly the value it had: blanking never goes through a colour or grey-scale
conversion. :meth:`Frames.display` derives the picture a viewer shows (for OCR); :meth:`Frames.blank` writes the
stored value that *displays* black (:mod:`~dicom_relay.deid.pixels.display`): grey-scale the image's own darkest
value, moved to the window's black edge where that is not yet black (MONOCHROME1 and a negative Rescale Slope turn
the scale over; clipped to what Bits Stored and Pixel Representation can hold), RGB 0, YBR_FULL* Y=0 with neutral
chroma, PALETTE COLOR the index whose palette entry is darkest. Bits above Bits Stored are not kept (pydicom masks
them on decoding; an overlay hidden there is dropped, which de-identification wants anyway).

Transfer syntax written by :meth:`Frames.encode_into` (the source's wherever a lossless encoder for it exists):

=====================================================  ===============================================================
source                                                 written
=====================================================  ===============================================================
Implicit / Explicit VR LE, Explicit VR BE, Deflated    the same: same byte order, Planar Configuration, 1-bit packing;
                                                       native YBR_FULL_422 stays 4:2:2 (blank() keeps chroma pairs)
RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless     the same, with pydicom 3's encoders (pylibjpeg-rle, pyjpegls,
                                                       pylibjpeg-openjpeg)
JPEG Lossless .57 and SV1 .70                          JPEG-LS Lossless .80. pydicom 3 has no JPEG Lossless encoder,
                                                       nor has the venv or Debian 12 (libjpeg-turbo 2.1 predates
                                                       lossless encoding; imagecodecs on PyPI could, at the price of a
                                                       large new dependency). JPEG-LS is lossless as well, smaller
                                                       (measured: 640x480 RGB US 261 kB vs 394 kB, 512x512 CT 102 kB
                                                       vs 152 kB) and decoded by DCMTK, GDCM, Orthanc and pydicom
HTJ2K Lossless .201 / .202                             JPEG 2000 Lossless .90 (no HTJ2K encoder; .90 is decoded by more
                                                       systems)
JPEG Baseline .50, JPEG Extended .51 with 8 bits       JPEG Baseline .50, re-encoded by Pillow (libjpeg-turbo) with the
                                                       source frame's own quantisation tables and chroma sub-sampling:
                                                       the second generation adds rounding error only (measured in
                                                       tests/unit/pixels/test_codec.py) at about the source's size
JPEG Extended .51 with 12 bits                         JPEG-LS Lossless .80: no 12-bit JPEG encoder; no further loss
JPEG-LS Near-Lossless .81                              the same, with the source's NEAR (read from its scan header), so
                                                       the promised error bound holds for this step too
JPEG 2000 .91, HTJ2K .203                              JPEG 2000 Lossless .90: re-encoding at the source's ratio adds
                                                       a second, unbounded loss (measured outside the box: up to 2,107
                                                       levels on 693_J2KI.dcm, 405 on RG1_J2KI.dcm); lossless keeps the
                                                       decoded pixels exactly (the size grows: 3.6 times for a
                                                       640x480 RGB frame coded at 10:1)
=====================================================  ===============================================================

Why decode / re-encode rather than compressed-domain (DCT block) cleaning for JPEG Baseline: block cleaning exists
only for Huffman baseline JPEG (none of the other lossy syntaxes), would need a hand-written entropy coder (no
library in the venv or Debian offers it from Python), and blanks whole 8x8 / 16x16 blocks; re-encoding with the
source's quantisation tables changes the pixels outside the box by a mean of a few hundredths of a level, far
below the loss the source already had.

Lossy Image Compression is "01" whenever the source or the output is lossy; a lossy step done here appends one
Lossy Image Compression Ratio and one Method value (PS3.3 C.7.6.1.1.5), and the source's own lossy step is
recorded first when the header did not record it. Photometric Interpretation and Planar Configuration follow the
written syntax (PS3.5 8.2: Planar Configuration 0 for the JPEG family; colour JPEG 2000 stored with a component
transform, YBR_RCT or YBR_ICT, is written YBR_RCT with the reversible one).
Encapsulated output has a Basic Offset Table, and an Extended Offset Table only when a frame offset exceeds
2**32 - 1 (PS3.5 A.4). If an encoder refuses the data (an unusual bit depth), Explicit VR Little Endian is written:
lossless and readable everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless, RLELossless

from dicom_relay.deid.errors import DeidError
from dicom_relay.deid.pixels.display import Display, black_and_display
from dicom_relay.deid.pixels.writer import NATIVE, write_pixels

Box = tuple[int, int, int, int]
"""x0, y0, x1, y1: a half-open rectangle in the pixel coordinates of one frame (column, row)."""


class PixelCodecError(DeidError):
    """Pixel data could not be decoded or written back; the message names the transfer syntax and the reason."""


# The fastest plugin that decodes the syntax, measured (CPU ms, 640x480 RGB): JPEG Baseline pillow 2.8 vs
# pylibjpeg 7.2; JPEG-LS pyjpegls 10 vs pylibjpeg 42; RLE pylibjpeg 0.9 vs pydicom 4.8. Others: pydicom's order.
_FASTEST = {JPEGBaseline8Bit: "pillow", JPEGExtended12Bit: "pillow", JPEGLSLossless: "pyjpegls",
            JPEGLSNearLossless: "pyjpegls", RLELossless: "pylibjpeg"}


def _decode(decoder, ds: pydicom.Dataset, syntax: UID) -> tuple[np.ndarray, dict]:
    """Stored values (no colour conversion) and their pixel properties; the fastest plugin first, then any."""
    plugin = _FASTEST.get(syntax, "")
    plugins = [plugin, ""] if plugin in decoder.available_plugins else [""]
    for attempt in plugins:
        try:
            return decoder.as_array(ds, raw=True, decoding_plugin=attempt)
        except Exception as exc:  # decoders raise RuntimeError, ValueError, struct/KeyError on damaged data
            reason = type(exc).__name__  # (12-bit JPEG in Pillow, for instance: the other plugins may do it)
    raise PixelCodecError(f"{syntax.name} pixel data not decodable: {reason}")


@dataclass(eq=False)
class Frames:
    """Decoded pixel data of one instance, editable frame by frame, written back losslessly.

    ``stored`` is (frames, rows, columns[, samples]) in the colour space ``photometric`` (the decoder's output:
    YBR_FULL for sub-sampled native data, RGB for JPEG 2000 data stored as YBR_RCT / YBR_ICT).
    """

    stored: np.ndarray
    photometric: str
    source_syntax: UID
    source_photometric: str
    source_planar: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    black: np.ndarray
    fragments: list[bytes] = field(default_factory=list)
    changed_frames: set[int] = field(default_factory=set)
    _display: Display | None = None  # stored frame -> uint8 picture, chosen once per instance
    _even_columns: bool = False  # YBR_FULL_422 native: a blanked box covers whole pairs of pixels

    def __repr__(self) -> str:  # no pixel values in logs
        return (f"Frames({self.count} x {self.stored.shape[1:]} {self.stored.dtype}, {self.photometric}, "
                f"from {self.source_syntax.name})")

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
        arr, props = _decode(decoder, ds, syntax)
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
                     source_photometric=str(ds.get("PhotometricInterpretation", pi)),
                     source_planar=int(ds.get("PlanarConfiguration", 0) or 0),
                     bits_allocated=int(props["bits_allocated"]), bits_stored=bits_stored,
                     signed=signed, black=np.zeros(samples, arr.dtype), fragments=fragments)
        frames._even_columns = syntax in NATIVE and frames.source_photometric == "YBR_FULL_422"
        try:
            frames.black, frames._display = black_and_display(ds, arr, pi, bits_stored, signed)
        except ValueError as exc:
            raise PixelCodecError(f"{syntax.name}: {exc}") from None
        return frames

    def display(self, i: int) -> np.ndarray:
        """Frame ``i`` as a viewer shows it: uint8 (rows, columns) grey or (rows, columns, 3) RGB, a new array."""
        return self._display(i, self.stored[i])

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
            if region.ndim == 3:
                # Sample by sample: numpy's any() over the short last axis, and assigning a (samples,) array
                # by broadcasting, cost ~15x and ~80x more on a strided box (measured: 0.68 ms vs 0.04 ms
                # for a 320x50 RGB box).
                differs = region[..., 0] != self.black[0]
                for k in range(1, region.shape[2]):
                    differs |= region[..., k] != self.black[k]
                changed += int(np.count_nonzero(differs))
                for k in range(region.shape[2]):
                    region[..., k] = self.black[k]
            else:
                changed += int(np.count_nonzero(region != self.black[0]))
                region[...] = self.black[0]
        if changed:
            self.changed_frames.add(i)
        return changed

    def encode_into(self, ds: pydicom.Dataset) -> str:
        """Write Pixel Data and the attributes that must follow into ``ds``; return the transfer syntax UID written."""
        try:
            return str(write_pixels(ds, self))
        except Exception as exc:  # noqa: BLE001 - any encoder failure becomes one clear, PHI-free error
            raise PixelCodecError(f"{self.source_syntax.name} pixel data could not be written back: "
                                  f"{type(exc).__name__}") from None
