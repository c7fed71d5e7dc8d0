"""Write cleaned stored pixel values back into a dataset in the transfer syntax chosen for its source.

The mapping and the reasons for it are in :mod:`dicom_relay.deid.pixels.codec`. Encoders are pydicom 3's (RLE,
JPEG-LS, JPEG 2000) and Pillow's libjpeg-turbo for JPEG Baseline.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import pydicom
from PIL import Image, JpegImagePlugin
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
_KEPT = (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLSNearLossless)
_REPLACED = {JPEGLossless: JPEGLSLossless, JPEGLosslessSV1: JPEGLSLossless, HTJ2KLossless: JPEG2000Lossless,
             HTJ2KLosslessRPCL: JPEG2000Lossless, JPEG2000: JPEG2000Lossless, HTJ2K: JPEG2000Lossless}
LOSSY = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K)
# PS3.3 C.7.6.1.1.5.1: Lossy Image Compression Method, by the transfer syntax that applied the lossy step.
_METHOD = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1", JPEGLSNearLossless: "ISO_14495_1",
           JPEG2000: "ISO_15444_1", HTJ2K: "ISO_15444_15"}
_MAX_BOT_OFFSET = 2**32 - 1  # PS3.5 A.4: beyond it the Basic Offset Table cannot address a frame


def output_syntax(source: UID, bits_stored: int) -> UID:
    """The transfer syntax a cleaned instance is written in, given the one it came in."""
    if source in NATIVE or source in _KEPT:
        return source
    if source in _REPLACED:
        return _REPLACED[source]
    if source in (JPEGBaseline8Bit, JPEGExtended12Bit):
        return JPEGBaseline8Bit if bits_stored <= 8 else JPEGLSLossless
    return ExplicitVRLittleEndian  # any other decodable syntax: native, lossless, readable everywhere


class Decoded(Protocol):
    """What the writer needs to know of the decoded pixels (:class:`~dicom_relay.deid.pixels.codec.Frames`)."""

    stored: np.ndarray  # (frames, rows, columns[, samples]) stored values
    photometric: str  # colour space of ``stored`` as decoded
    source_syntax: UID
    source_photometric: str  # Photometric Interpretation of the source
    source_planar: int  # Planar Configuration of the source (0 if absent)
    bits_allocated: int
    bits_stored: int
    fragments: list[bytes]  # the source's encoded frames (empty for native sources)
    changed_frames: set[int]  # indices of the frames blank() changed


def write_pixels(ds: pydicom.Dataset, px: Decoded) -> UID:
    """Encode ``px.stored`` into ``ds`` (Pixel Data and the attributes that follow it); return the syntax written."""
    target = output_syntax(px.source_syntax, px.bits_stored)
    encoded: dict[int, bytes] = {}  # the frames encoded here (not copied from the source)
    try:
        if target in NATIVE:
            _write_native(ds, px, target)
        else:
            # A frame blank() did not touch keeps its source codestream when the syntax is kept: no time spent,
            # and no second generation for a lossy frame.
            keep = set() if target != px.source_syntax else set(range(len(px.fragments))) - px.changed_frames
            encoded = _encode(ds, px, target, [i for i in range(px.stored.shape[0]) if i not in keep])
            _encapsulate(ds, [encoded[i] if i in encoded else px.fragments[i] for i in range(px.stored.shape[0])])
    except (ValueError, RuntimeError, OSError, NotImplementedError):
        # The encoder refused this bit depth / colour space combination: native is lossless and always readable.
        target = ExplicitVRLittleEndian
        encoded = {}
        _write_native(ds, px, target)
    _record_lossy(ds, px, target, encoded)
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = target
    return target


def _write_native(ds: pydicom.Dataset, px: Decoded, target: UID) -> None:
    stored = px.stored
    # Native 4:2:2 stays 4:2:2 (blank() keeps chroma pairs whole); data decoded from JPEG is at full resolution.
    subsampled = px.source_photometric == "YBR_FULL_422" and px.source_syntax in NATIVE
    pi = "YBR_FULL_422" if subsampled else "YBR_FULL" if px.photometric == "YBR_FULL_422" else px.photometric
    planar = px.source_planar if stored.ndim == 4 and px.source_syntax in NATIVE else 0
    if subsampled:  # PS3.3 C.7.6.3.1.2: Y1 Y2 Cb Cr per pair of columns, chroma of the pair's first
        frames, rows, cols, _ = stored.shape
        luma = stored[..., 0].reshape(frames, rows, cols // 2, 2)
        data = np.concatenate([luma, stored[:, :, 0::2, 1:3]], axis=-1)
    elif planar == 1:
        data = stored.transpose(0, 3, 1, 2)
    else:
        data = stored
    if px.bits_allocated == 1:
        raw = pack_bits(np.ascontiguousarray(data).ravel())
    else:
        dtype = np.dtype(f"{'i' if stored.dtype.kind == 'i' else 'u'}{px.bits_allocated // 8}")
        dtype = dtype.newbyteorder(">" if target == ExplicitVRBigEndian else "<")
        raw = np.ascontiguousarray(data).astype(dtype, copy=False).tobytes()
    if len(raw) % 2:
        raw += b"\x00"
    ds.PixelData = raw
    ds["PixelData"].VR = "OB" if px.bits_allocated <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    ds.PhotometricInterpretation = pi
    if stored.ndim == 4:
        ds.PlanarConfiguration = planar


def _j2k_photometric(source_pi: str, photometric: str) -> str:
    """Colour JPEG 2000 stored with a component transform (YBR_RCT / YBR_ICT) decodes to RGB; keep a transform.

    PS3.5 8.2.4: JPEG 2000 Lossless with the reversible transform is YBR_RCT (pydicom's encoder applies it for any
    interpretation but RGB); RGB sources stay RGB, without a transform.
    """
    return "YBR_RCT" if photometric == "RGB" and source_pi in ("YBR_RCT", "YBR_ICT") else photometric


def _encode(ds: pydicom.Dataset, px: Decoded, target: UID, indices: list[int]) -> dict[int, bytes]:
    """Encode the frames ``indices`` in ``target``; set the Photometric Interpretation / Planar Configuration."""
    if target == JPEGBaseline8Bit:
        return _jpeg_baseline(ds, px, indices)
    stored = px.stored
    pi = _j2k_photometric(px.source_photometric, px.photometric) if target == JPEG2000Lossless else px.photometric
    if pi == "YBR_FULL_422":  # decoded at full resolution
        pi = "YBR_FULL"
    rows, cols = stored.shape[1:3]
    options = dict(rows=rows, columns=cols, samples_per_pixel=stored.shape[3] if stored.ndim == 4 else 1,
                   number_of_frames=1, bits_allocated=stored.dtype.itemsize * 8, bits_stored=px.bits_stored,
                   pixel_representation=1 if stored.dtype.kind == "i" else 0, photometric_interpretation=pi,
                   planar_configuration=0)
    if target == JPEGLSNearLossless:
        options["jls_error"] = _jpeg_ls_near(px.fragments[0])
    encoder = get_encoder(target)
    # PS3.5 Annex G takes any sample size that fits 15 segments; pydicom's profile table (8.2.2) lists fewer.
    validate = target != RLELossless
    encoded = {i: bytes(encoder.encode(stored[i], validate=validate, **options)) for i in indices}
    ds.PhotometricInterpretation = pi
    if stored.ndim == 4 and (target != RLELossless or "PlanarConfiguration" not in ds):
        ds.PlanarConfiguration = 0  # PS3.5 8.2.3 / 8.2.4; for RLE it is irrelevant (G.2) and left as it was
    return encoded


def _jpeg_ls_near(codestream: bytes) -> int:
    """NEAR of a JPEG-LS codestream: the byte after the component list of its first SOS (ISO 14495-1 C.2.3)."""
    at = 2  # after SOI; marker segments (SOF55, LSE, APPn...) each carry their own length
    while at + 4 <= len(codestream) and codestream[at] == 0xFF:
        if codestream[at + 1] == 0xDA:
            components = codestream[at + 4]
            return int(codestream[at + 5 + 2 * components])
        at += 2 + int.from_bytes(codestream[at + 2:at + 4], "big")
    raise ValueError("JPEG-LS codestream without a start of scan")


def _jpeg_baseline(ds: pydicom.Dataset, px: Decoded, indices: list[int]) -> dict[int, bytes]:
    """JPEG Baseline frames with each source frame's own quantisation tables and chroma sub-sampling."""
    if px.stored.dtype != np.uint8:
        raise ValueError("JPEG Baseline needs 8-bit samples")
    encoded = {}
    pi = px.photometric
    for index in indices:
        frame = np.ascontiguousarray(px.stored[index])
        source = Image.open(io.BytesIO(px.fragments[index]))
        tables = source.quantization
        options = {}
        if frame.ndim == 2:
            image = Image.frombuffer("L", (frame.shape[1], frame.shape[0]), frame)
        elif px.photometric in ("YBR_FULL", "YBR_FULL_422"):
            image = Image.frombuffer("YCbCr", (frame.shape[1], frame.shape[0]), frame)
            sampling = JpegImagePlugin.get_sampling(source)
            pi = "YBR_FULL" if sampling in (0, -1) else "YBR_FULL_422"  # PS3.5 8.2.1
            options["subsampling"] = max(sampling, 0)
        else:  # decoded as RGB: store R, G, B components without a colour transform (Adobe marker)
            image = Image.frombuffer("RGB", (frame.shape[1], frame.shape[0]), frame)
            options.update(keep_rgb=True, subsampling=0)
            tables = {0: tables[0]}  # libjpeg quantises every RGB component with table 0
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", qtables=[tables[k] for k in sorted(tables)], **options)
        encoded[index] = buffer.getvalue()
    if encoded:
        ds.PhotometricInterpretation = pi
    if px.stored.ndim == 4:
        ds.PlanarConfiguration = 0
    return encoded


def _encapsulate(ds: pydicom.Dataset, frames: list[bytes]) -> None:
    """Encapsulate with a Basic Offset Table, or an Extended Offset Table when the BOT cannot address a frame."""
    last_offset = sum(len(f) + (len(f) % 2) + 8 for f in frames[:-1])
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    if last_offset > _MAX_BOT_OFFSET:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    else:
        ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _record_lossy(ds: pydicom.Dataset, px: Decoded, target: UID, encoded: dict[int, bytes]) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy, always "01"; one Ratio and one Method value per lossy step."""
    stored, source, fragments = px.stored, px.source_syntax, px.fragments
    new_step = target in LOSSY and bool(encoded)
    if source not in LOSSY and not new_step:
        return
    methods = [str(v) for v in _values(ds, "LossyImageCompressionMethod")]
    ratios = [str(v) for v in _values(ds, "LossyImageCompressionRatio")]
    raw = stored.nbytes
    if source in LOSSY and (ds.get("LossyImageCompression") != "01" or not methods):
        methods.append(_METHOD[source])
        ratios.append(_ratio(raw, fragments))
    if new_step:
        methods.append(_METHOD[target])
        ratios.append(_ratio(stored[0].nbytes * len(encoded), list(encoded.values())))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]
    ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]


def _values(ds, keyword) -> list:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]


def _ratio(raw: int, frames: list[bytes]) -> str:
    return f"{raw / max(1, sum(map(len, frames))):.2f}"
