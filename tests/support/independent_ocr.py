"""An OCR pass independent of the project's own: the ``tesseract`` command-line program, run on what a viewer shows.

The tests of the pixel stage must not trust the stage's own OCR module to judge its own output, so this reads
frames with the ``tesseract`` program directly (Debian's tesseract-ocr), in a subprocess, on each frame rendered
for display: colour converted to grey; palette colour through its lookup table; monochrome scaled from the
frame's own minimum to maximum, MONOCHROME1 inverted (so text looks the same whatever the photometric
interpretation). Each frame is read twice (see :func:`views`), in sparse-text mode (``--psm 11``: scattered
labels, no page layout).

A token is *found* when it occurs in the OCR text, case and punctuation ignored, with at most
``max(1, len // 6)`` character edits (OCR confuses O/0, I/1, S/5...; one error per six characters is what Tesseract
makes on clean 16-20 px text, and short tokens this tolerant would match noise).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def display_frames(ds) -> list[np.ndarray]:
    """Each frame of ``ds`` as an 8-bit grey image (H, W), as a viewer would show it without a window."""
    from pydicom.pixels import apply_color_lut

    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pi = str(ds.PhotometricInterpretation)
    if frames == 1:
        arr = arr[None]
    out = []
    for f in arr:
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(f, ds).astype(np.float64)
            rgb = rgb / (257.0 if rgb.max() > 255 else 1.0)
            out.append(np.asarray(Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).convert("L")))
        elif f.ndim == 3:  # pydicom returns RGB for RGB and YBR_* (it converts YBR to RGB)
            if f.dtype != np.uint8:
                f = (f.astype(np.float64) / (2 ** int(ds.BitsStored) - 1) * 255).astype(np.uint8)
            out.append(np.asarray(Image.fromarray(f).convert("L")))
        else:
            g = f.astype(np.float64)
            lo, hi = g.min(), g.max()
            g = (g - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(g)
            if pi == "MONOCHROME1":
                g = 255 - g
            out.append(g.astype(np.uint8))
    return out


def views(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What Tesseract is shown of one frame: the frame as is (dark text on a light screenshot), and the bright
    half of it as black on white (light overlay text, separated from the speckle or tissue under it, which
    otherwise merges into Tesseract's own global threshold)."""
    return gray, np.where(gray >= 128, 0, 255).astype(np.uint8)


def read_text(gray: np.ndarray) -> str:
    """Tesseract's text for one 8-bit grey frame, all views joined."""
    texts = []
    with tempfile.TemporaryDirectory(prefix="ocr-") as tmp:
        for i, img in enumerate(views(gray)):
            png = Path(tmp) / f"f{i}.png"
            Image.fromarray(img).save(png)
            r = subprocess.run(["tesseract", str(png), "stdout", "--psm", "11", "-l", "eng"],
                               capture_output=True, text=True, timeout=120,
                               env={**os.environ, "OMP_THREAD_LIMIT": "1"})
            if r.returncode != 0:
                raise RuntimeError(f"tesseract failed: {r.stderr.strip()[:300]}")
            texts.append(r.stdout)
    return "\n".join(texts)


def normalise(text: str) -> str:
    return "".join(c for c in text.upper() if c.isalnum())


def _edits_as_substring(needle: str, hay: str) -> int:
    """Fewest edits that turn ``needle`` into some substring of ``hay`` (Sellers' algorithm)."""
    prev = list(range(len(needle) + 1))
    best = len(needle)
    for ch in hay:
        cur = [0]
        for i, n in enumerate(needle, 1):
            cur.append(min(prev[i] + 1, cur[i - 1] + 1, prev[i - 1] + (n != ch)))
        best = min(best, cur[-1])
        prev = cur
    return best


def found(token: str, text: str) -> bool:
    """Whether ``token`` is readable in ``text`` (see the module docstring for the tolerance)."""
    needle = normalise(token)
    if not needle:
        return False
    # Over the whole text: sparse-text mode breaks a label into words on lines of their own.
    hay = normalise(text)
    return _edits_as_substring(needle, hay) <= max(1, len(needle) // 6)


def readable(tokens, text: str) -> list[str]:
    return [t for t in tokens if found(t, text)]
