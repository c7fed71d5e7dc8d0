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

Display = Callable[[int, np.ndarray], np.ndarray]  # (frame index, stored frame) -> uint8 picture


def _functional(ds: pydicom.Dataset, sequence: str, keyword: str, frame: int):
    """``keyword`` for one frame: its Per-Frame Functional Group ``sequence``, else the Shared one, else top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and index < len(items) and sequence in items[index] and items[index][sequence].value:
            item = items[index][sequence][0]
            if keyword in item:
                return item[keyword].value
    return ds[keyword].value if keyword in ds else None


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
        return black, lambda _, frame: _ybr_to_rgb(frame >> shift if shift else frame)
    if photometric == "RGB" or samples == 3:
        black = np.zeros(samples, dtype=arr.dtype)
        if shift:
            return black, lambda _, frame: (frame >> shift).astype(np.uint8)
        return black, lambda _, frame: frame.astype(np.uint8)  # a copy: drawing on it must not edit the pixels
    raise ValueError(f"photometric interpretation {photometric} not supported")


def _grey(ds, arr, photometric, low, high) -> tuple[np.ndarray, Display]:
    """Black is the data's own darkest value, lowered (raised) to every frame's window edge where not yet black.

    Using the darkest value the image already has (air, padding) rather than the representable extreme keeps the
    blanked box out of the way of lossy re-encoding (no 65535-level step) and of tools that auto-window.
    """
    frames = []  # (slope, intercept, window low, window high or None) per frame
    for i in range(arr.shape[0]):
        slope = _first(_functional(ds, "PixelValueTransformationSequence", "RescaleSlope", i)) or 1.0
        intercept = _first(_functional(ds, "PixelValueTransformationSequence", "RescaleIntercept", i)) or 0.0
        center = _first(_functional(ds, "FrameVOILUTSequence", "WindowCenter", i))
        width = _first(_functional(ds, "FrameVOILUTSequence", "WindowWidth", i))
        if center is not None and width is not None and width >= 1:  # PS3.3 C.11.2.1.2.1, linear
            frames.append((slope, intercept, center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2))
        else:
            frames.append((slope, intercept, None, None))
    # Black sits at the low stored values unless MONOCHROME1 or a negative slope (not both) turn the scale over.
    black_low = (photometric == "MONOCHROME2") == (frames[0][0] > 0)
    value = int(arr.min()) if black_low else int(arr.max())
    for slope, intercept, lower, upper in frames:
        if lower is not None:
            threshold = ((lower if photometric == "MONOCHROME2" else upper) - intercept) / slope
            value = min(value, int(np.floor(threshold))) if black_low else max(value, int(np.ceil(threshold)))
    black = np.array([min(max(value, low), high)], dtype=arr.dtype)

    def show(index: int, frame: np.ndarray) -> np.ndarray:
        slope, intercept, lower, upper = frames[index]
        values = frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if lower is None:
            lower, upper = float(values.min()), float(values.max())
        out = _to_uint8(values, lower, upper)
        return 255 - out if photometric == "MONOCHROME1" else out

    return black, show


def _palette(ds, dtype, high) -> tuple[np.ndarray, Display]:
    lut = apply_color_lut(np.arange(high + 1, dtype=dtype), ds)
    if lut.dtype != np.uint8:  # 16-bit LUT entries: keep the top 8 bits (or the lot if they fit in 8)
        lut = (lut >> 8).astype(np.uint8) if lut.max() > 255 else lut.astype(np.uint8)
    luminance = lut.astype(np.int32) @ np.array([299, 587, 114], dtype=np.int32)
    black = np.array([int(np.argmin(luminance))], dtype=dtype)
    return black, lambda _, frame: lut[frame]


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
