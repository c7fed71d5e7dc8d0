"""Frames per second per core of the pixel stage (OCR, blanking, proof, re-encoding) on 640x480 RGB ultrasound.

    PYTHONPATH=include:. .venv/bin/python scripts/bench_pixels.py [N_IMAGES]

Each single-frame image is new (rendered text differs: no cache help between images); a 30-frame cine loop
repeats its overlay over changing speckle, as a real loop does. CPU time of this process (one core; Tesseract
limited to one thread), after one warm-up instance. Prints one line per case.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

import numpy as np  # noqa: E402

from dicom_relay.deid.pixels import detect, rules, stage  # noqa: E402
from dicom_relay.deid.pixels.ocr import reader  # noqa: E402
from tests.unit.deid.pixels.render import DEVICE_LINES, IDENTIFYING_LINES, background, render, us_dataset  # noqa: E402

LINES = IDENTIFYING_LINES + DEVICE_LINES


def one(ds, policy):
    return stage.clean_instance(ds, policy=policy, needles=tuple(detect.needles(ds)), rules=rules.load(),
                                scanned_because="bench")


def main(n: int) -> None:
    one(us_dataset(render(0, lines=LINES).rgb), "clean")  # warm-up: model loaded
    for k, policy in enumerate(("clean", "all-text")):
        # New images for each policy: the reader's cache must not answer from the previous run.
        datasets = [us_dataset(render(100 + 1000 * k + i, lines=LINES).rgb) for i in range(n)]
        t0 = time.process_time()
        held = sum(one(ds, policy).held for ds in datasets)
        cpu = time.process_time() - t0
        print(f"single-frame 640x480 RGB, {len(LINES)} lines, policy {policy}: {n / cpu:.1f} frames/s per core "
              f"({cpu / n * 1000:.1f} ms/frame; {held}/{n} held)")
    # Cine loops: the same overlay on every frame over new speckle; the overlay on the black border (as devices
    # draw it: regions read once, then answered by the cache) or over the moving image (every frame read).
    rng = np.random.default_rng(1)
    for where, seed in (("on the border", 7), ("over the image", 8)):
        base = render(seed, lines=LINES)
        frames = []
        for _ in range(30):
            speckle = background(480, 640, rng)
            text = np.zeros((480, 640), bool)
            for x0, y0, x1, y1 in base.boxes:
                text[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True
            keep = text if where == "over the image" else text | ~_sector(480, 640)
            frames.append(np.where(keep[..., None], base.rgb, speckle))
        ds = us_dataset(frames[0], frames=30)
        ds.PixelData = np.stack(frames).astype(np.uint8).tobytes()
        before = reader().regions_read
        t0 = time.process_time()
        rec = one(ds, "clean")
        cpu = time.process_time() - t0
        print(f"cine 30 x 640x480 RGB, overlay {where}, policy clean: {30 / cpu:.1f} frames/s per core "
              f"({rec.verdict}; Tesseract read {reader().regions_read - before} regions)")


def _sector(h, w):
    """The speckle sector of ``render`` (where a real loop's pixels move)."""
    yy, xx = np.mgrid[0:h, 0:w]
    cx, top = w / 2, h * 0.08
    ang = np.arctan2(xx - cx, yy - top + 1e-6)
    return (np.abs(ang) < 0.6) & (np.hypot(xx - cx, yy - top) < h * 0.85) & (yy > top)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
