"""Compare OCR engines on rendered burned-in text: tokens found / rendered, and ms per 640x480 RGB frame.

    PYTHONPATH=include:. .venv/bin/python scripts/ocr_compare.py [N_IMAGES]

Images: tests/unit/deid/pixels/render.py (6 lines each, 6 fonts, 12-22 px, 6 colours, over speckle or black).
A token counts as found when it appears in the engine's text (case and spaces ignored). One process, one
core (OMP_THREAD_LIMIT=1 / onnxruntime intra_op_num_threads=1), engines created before timing starts.
Engines not installed are reported as such (rapidocr-onnxruntime is not a requirement of the product).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

from PIL import Image  # noqa: E402

from tests.unit.deid.pixels.render import render, tokens  # noqa: E402


def score(texts: list[str], lines: list[str]) -> tuple[int, int]:
    found = " ".join(texts).upper().replace(" ", "")
    want = [t.upper() for line in lines for t in tokens(line)]
    return sum(t in found for t in want), len(want)


def relay_pipeline():
    from dicom_relay.deid.pixels.ocr import TesseractReader

    r = TesseractReader()
    r.CACHE_SIZE = 0  # every frame is new here; measure without the cache
    return lambda rgb: [line.text for line in r.read(rgb)]


def tesseract_full_frame():
    import tesserocr

    from dicom_relay.deid.pixels.ocr import tessdata_dir

    api = tesserocr.PyTessBaseAPI(path=tessdata_dir(), lang="eng", psm=tesserocr.PSM.SPARSE_TEXT)

    def run(rgb):
        api.SetImage(Image.fromarray(rgb.max(axis=2)))
        return [api.GetUTF8Text()]

    return run


def pytesseract_full_frame():
    import pytesseract

    return lambda rgb: [pytesseract.image_to_string(Image.fromarray(rgb.max(axis=2)), config="--psm 11")]


def rapidocr_full_frame():
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)

    def run(rgb):
        result, _ = engine(rgb[..., ::-1].copy())
        return [r[1] for r in (result or [])]

    return run


ENGINES = {
    "relay: detector + tesserocr per line": relay_pipeline,
    "tesserocr full frame (psm 11)": tesseract_full_frame,
    "pytesseract full frame (psm 11)": pytesseract_full_frame,
    "rapidocr-onnxruntime full frame": rapidocr_full_frame,
}


def main(n: int) -> None:
    images = [render(seed) for seed in range(1000, 1000 + n)]
    for name, make in ENGINES.items():
        try:
            run = make()
        except ImportError as exc:
            print(f"{name}: not installed ({exc.name})")
            continue
        run(images[0].rgb)  # warm-up
        hit = total = 0
        started = time.process_time()
        wall = time.perf_counter()
        for img in images:
            h, t = score(run(img.rgb), img.lines)
            hit, total = hit + h, total + t
        cpu = (time.process_time() - started) / n
        print(f"{name}: tokens {hit}/{total} = {hit / total:.1%}; {cpu * 1000:.1f} ms CPU/frame "
              f"({1 / cpu:.1f} frames/s per core), wall {(time.perf_counter() - wall) / n * 1000:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
