"""What a viewer shows for stored pixel values, and which stored value it shows as black (PS3.3 C.7.6.3, C.11).

Grey-scale: Modality LUT as Rescale Slope / Intercept (PS3.3 C.11.1), then the first VOI window (C.11.2.1.2.1,
linear function), else the frame's own range; MONOCHROME1 inverted. Values may sit at the top level or in the
Shared / Per-Frame Functional Groups of an enhanced multi-frame image (the frame's own groups win).
PALETTE COLOR: the Red / Green / Blue Palette Color LUTs (C.7.6.3.1.5, segmented ones included, via pydicom).
RGB: scaled to 8 bits. YBR_FULL: converted to RGB (C.7.6.3.1.2), integer arithmetic, vectorised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
from pydicom.pixels.processing import apply_color_lut

Display = Callable[[np.ndarray], np.ndarray]


def _functional(ds: pydicom.Dataset, sequence: str, keyword: str):
    """Value of ``keyword`` at the top level, else in the first frame's / shared functional group ``sequence``."""
    if keyword in ds:
        return ds[keyword].value
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        if items and sequence in items[0] and items[0][sequence].value:
            item = items[0][sequence][0]
            if keyword in item:
                return item[keyword].value
    return None


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0]) if len(value) else None
    return float(value)


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scale = 255.0 / max(high - low, 1e-6)
    return np.clip((values - low) * scale, 0, 255).astype(np.uint8)


def black_and_display(ds: pydicom.Dataset, arr: np.ndarray, photometric: str, bits_stored: int,
                      signed: bool) -> tuple[np.ndarray, Display]:
    """Return (stored value per sample that displays black, function frame -> uint8 picture) for ``arr``."""
    samples = arr.shape[-1] if arr.ndim == 4 else 1
    low = -(1 << (bits_stored - 1)) if signed else 0
    high = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return _grey(ds, arr, photometric, low, high)
    if photometric == "PALETTE COLOR":
        return _palette(ds, arr.dtype, high)
    shift = max(bits_stored - 8, 0)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        black = np.array([0, 1 << (bits_stored - 1), 1 << (bits_stored - 1)], dtype=arr.dtype)
        return black, lambda frame: _ybr_to_rgb(frame >> shift if shift else frame)
    if photometric == "RGB" or samples == 3:
        black = np.zeros(samples, dtype=arr.dtype)
        if shift:
            return black, lambda frame: (frame >> shift).astype(np.uint8)
        return black, lambda frame: frame.astype(np.uint8, copy=False)
    raise ValueError(f"photometric interpretation {photometric} not supported")


def _grey(ds, arr, photometric, low, high) -> tuple[np.ndarray, Display]:
    """Black is the data's own darkest value, lowered (raised) to the window's edge when that is not yet black.

    Using the darkest value the image already has (air, padding) rather than the representable extreme keeps the
    blanked box out of the way of lossy re-encoding (no 65535-level step) and of tools that auto-window.
    """
    slope = _first(_functional(ds, "PixelValueTransformationSequence", "RescaleSlope")) or 1.0
    intercept = _first(_functional(ds, "PixelValueTransformationSequence", "RescaleIntercept")) or 0.0
    center = _first(_functional(ds, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_functional(ds, "FrameVOILUTSequence", "WindowWidth"))
    windowed = center is not None and width is not None and width >= 1
    # Black sits at the low stored values unless MONOCHROME1 or a negative slope (not both) turn the scale over.
    black_low = (photometric == "MONOCHROME2") == (slope > 0)
    if black_low:
        value = int(arr.min())
    else:
        value = int(arr.max())
    if windowed:
        edge = center - 0.5 - (width - 1) / 2 if photometric == "MONOCHROME2" else center - 0.5 + (width - 1) / 2
        threshold = (edge - intercept) / slope  # stored value at the window's black edge (C.11.2.1.2.1)
        value = min(value, int(np.floor(threshold))) if black_low else max(value, int(np.ceil(threshold)))
    black = np.array([min(max(value, low), high)], dtype=arr.dtype)

    def show(frame: np.ndarray) -> np.ndarray:
        values = frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if center is not None and width is not None and width >= 1:
            out = _to_uint8(values, center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)
        else:
            out = _to_uint8(values, float(values.min()), float(values.max()))
        return 255 - out if photometric == "MONOCHROME1" else out

    return black, show


def _palette(ds, dtype, high) -> tuple[np.ndarray, Display]:
    lut = apply_color_lut(np.arange(high + 1, dtype=dtype), ds)
    if lut.dtype != np.uint8:  # 16-bit LUT entries: keep the top 8 bits (or the lot if they fit in 8)
        lut = (lut >> 8).astype(np.uint8) if lut.max() > 255 else lut.astype(np.uint8)
    luminance = lut.astype(np.int32) @ np.array([299, 587, 114], dtype=np.int32)
    black = np.array([int(np.argmin(luminance))], dtype=dtype)
    return black, lambda frame: lut[frame]


def _ybr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """YBR_FULL (PS3.3 C.7.6.3.1.2) to RGB, 8 bits, fixed-point (16-bit fraction) so no float temporaries."""
    y = frame[..., 0].astype(np.int32) << 16
    cb = frame[..., 1].astype(np.int32) - 128
    cr = frame[..., 2].astype(np.int32) - 128
    rgb = np.empty(frame.shape, dtype=np.uint8)
    half = 1 << 15
    rgb[..., 0] = np.clip((y + 91881 * cr + half) >> 16, 0, 255)
    rgb[..., 1] = np.clip((y - 22554 * cb - 46802 * cr + half) >> 16, 0, 255)
    rgb[..., 2] = np.clip((y + 116130 * cb + half) >> 16, 0, 255)
    return rgb
