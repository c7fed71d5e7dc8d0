"""Write cleaned stored pixel values back into a dataset in the transfer syntax chosen for its source.

The mapping and the reasons for it are in :mod:`dicom_relay.deid.pixels.codec`. Encoders are pydicom 3's (RLE,
JPEG-LS, JPEG 2000) and Pillow's libjpeg-turbo for JPEG Baseline.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image, JpegImagePlugin
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


def write_pixels(ds: pydicom.Dataset, stored: np.ndarray, photometric: str, source: UID, bits_stored: int,
                 fragments: list[bytes]) -> UID:
    """Encode ``stored`` (frames, rows, columns[, samples], colour space ``photometric``) into ``ds``."""
    target = output_syntax(source, bits_stored)
    written: list[bytes] = []
    try:
        if target in NATIVE:
            _write_native(ds, stored, photometric, target)
        else:
            written = _encode(ds, stored, photometric, source, target, bits_stored, fragments)
            _encapsulate(ds, written)
    except (ValueError, RuntimeError, OSError, NotImplementedError):
        # The encoder refused this bit depth / colour space combination: native is lossless and always readable.
        target = ExplicitVRLittleEndian
        written = []
        _write_native(ds, stored, photometric, target)
    _record_lossy(ds, stored, source, target, fragments, written)
    ds.file_meta.TransferSyntaxUID = target
    return target


def _native_photometric(ds: pydicom.Dataset, photometric: str, target: UID) -> str:
    source = str(ds.get("PhotometricInterpretation", photometric))
    if source == "YBR_FULL_422" and ds.file_meta.TransferSyntaxUID in NATIVE and target in NATIVE:
        return "YBR_FULL_422"
    return "YBR_FULL" if photometric == "YBR_FULL_422" else photometric


def _write_native(ds: pydicom.Dataset, stored: np.ndarray, photometric: str, target: UID) -> None:
    pi = _native_photometric(ds, photometric, target)
    bits_allocated = int(ds.BitsAllocated)
    planar = int(ds.get("PlanarConfiguration", 0) or 0) if stored.ndim == 4 else 0
    if ds.file_meta.TransferSyntaxUID not in NATIVE:
        planar = 0
    if pi == "YBR_FULL_422":  # PS3.3 C.7.6.3.1.2: Y1 Y2 Cb Cr per pair of columns, chroma of the pair's first
        frames, rows, cols, _ = stored.shape
        luma = stored[..., 0].reshape(frames, rows, cols // 2, 2)
        data = np.concatenate([luma, stored[:, :, 0::2, 1:3]], axis=-1)
    elif planar == 1:
        data = stored.transpose(0, 3, 1, 2)
    else:
        data = stored
    if bits_allocated == 1:
        raw = pack_bits(np.ascontiguousarray(data).ravel())
    else:
        dtype = np.dtype(f"{'i' if stored.dtype.kind == 'i' else 'u'}{bits_allocated // 8}")
        dtype = dtype.newbyteorder(">" if target == ExplicitVRBigEndian else "<")
        raw = np.ascontiguousarray(data).astype(dtype, copy=False).tobytes()
    if len(raw) % 2:
        raw += b"\x00"
    ds.PixelData = raw
    ds["PixelData"].VR = "OB" if bits_allocated <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    ds.PhotometricInterpretation = pi
    if stored.ndim == 4:
        ds.PlanarConfiguration = planar


def _j2k_photometric(source_pi: str, photometric: str, target: UID) -> str:
    """JPEG 2000 data stored with a colour transform (YBR_RCT / YBR_ICT, PS3.5 8.2.4) is decoded as RGB."""
    if photometric == "RGB" and source_pi in ("YBR_RCT", "YBR_ICT"):
        return "YBR_RCT" if target == JPEG2000Lossless else "YBR_ICT"
    return photometric


def _encode(ds, stored, photometric, source, target, bits_stored, fragments) -> list[bytes]:
    source_pi = str(ds.get("PhotometricInterpretation", photometric))
    if target == JPEGBaseline8Bit:
        return _jpeg_baseline(ds, stored, photometric, fragments)
    pi = photometric
    if target in (JPEG2000Lossless, JPEG2000):
        pi = _j2k_photometric(source_pi, photometric, target)
    if pi == "YBR_FULL_422":  # decoded at full resolution
        pi = "YBR_FULL"
    frames, rows, cols = stored.shape[:3]
    options = dict(rows=rows, columns=cols, samples_per_pixel=stored.shape[3] if stored.ndim == 4 else 1,
                   number_of_frames=frames, bits_allocated=stored.dtype.itemsize * 8, bits_stored=bits_stored,
                   pixel_representation=1 if stored.dtype.kind == "i" else 0, photometric_interpretation=pi,
                   planar_configuration=0)
    if target == JPEGLSNearLossless:
        options["jls_error"] = _jpeg_ls_near(fragments[0])
    if target == JPEG2000:
        raw_frame = stored[0].nbytes
        options["j2k_cr"] = [max(1.0, raw_frame * len(fragments) / max(1, sum(map(len, fragments))))]
    encoder = get_encoder(target)
    try:
        written = [bytes(f) for f in encoder.iter_encode(stored if frames > 1 else stored[0], **options)]
    except ValueError:
        if target != RLELossless:
            raise
        # PS3.5 G allows any Bits Allocated that fits 15 segments; pydicom's profile table lists 8 and 16 only.
        written = [bytes(f) for f in encoder.iter_encode(stored if frames > 1 else stored[0], validate=False,
                                                            **options)]
    ds.PhotometricInterpretation = pi
    if stored.ndim == 4 and target != RLELossless:
        ds.PlanarConfiguration = 0  # PS3.5 8.2.3 / 8.2.4; for RLE it is irrelevant (G.2) and left as it was
    elif stored.ndim == 4 and "PlanarConfiguration" not in ds:
        ds.PlanarConfiguration = 0
    return written


def _jpeg_ls_near(codestream: bytes) -> int:
    """NEAR of a JPEG-LS codestream: the byte after the component list of its first SOS (ISO 14495-1 C.2.3)."""
    at = codestream.find(b"\xff\xda")
    if at < 0:
        raise ValueError("JPEG-LS codestream without a start of scan")
    components = codestream[at + 4]
    return int(codestream[at + 5 + 2 * components])


def _jpeg_baseline(ds, stored, photometric, fragments) -> list[bytes]:
    """One JPEG Baseline frame per source frame, with the source frame's quantisation tables and sub-sampling."""
    if stored.dtype != np.uint8:
        raise ValueError("JPEG Baseline needs 8-bit samples")
    out = []
    pi = photometric
    for index, frame in enumerate(stored):
        source = Image.open(io.BytesIO(fragments[min(index, len(fragments) - 1)]))
        tables = source.quantization
        sampling = JpegImagePlugin.get_sampling(source) if frame.ndim == 3 else -1
        options = {}
        if frame.ndim == 2:
            image = Image.frombuffer("L", frame.shape[::-1], np.ascontiguousarray(frame))
            pi = photometric
        elif photometric in ("YBR_FULL", "YBR_FULL_422"):
            image = Image.frombuffer("YCbCr", (frame.shape[1], frame.shape[0]), np.ascontiguousarray(frame))
            pi = "YBR_FULL" if sampling in (0, -1) else "YBR_FULL_422"
            options["subsampling"] = max(sampling, 0)
        else:  # decoded as RGB: store R, G, B components without a colour transform (Adobe marker)
            image = Image.frombuffer("RGB", (frame.shape[1], frame.shape[0]), np.ascontiguousarray(frame))
            options.update(keep_rgb=True, subsampling=0)
            tables = {0: tables[0]}
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", qtables=[tables[k] for k in sorted(tables)], **options)
        out.append(buffer.getvalue())
    ds.PhotometricInterpretation = pi
    if stored.ndim == 4:
        ds.PlanarConfiguration = 0
    return out


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


def _record_lossy(ds, stored, source, target, fragments, written) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy, always "01"; one Ratio and one Method value per lossy step."""
    new_step = target in LOSSY
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
        ratios.append(_ratio(raw, written))
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
