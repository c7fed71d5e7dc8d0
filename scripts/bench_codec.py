"""CPU time of the pixel codec per transfer syntax: read + decode, display, blank one box, encode + write.

Frames: pydicom-data's US1_UNCR.dcm (640x480 RGB ultrasound) and 693_UNCR.dcm (512x512, 14 of 16 bits, signed),
transcoded with DCMTK (dcmcrle, dcmcjpls, dcmcjpeg) and pydicom (JPEG 2000). CPU time of this process
(``time.process_time``, so other load on the machine does not count), median of N runs, one frame each.

    PYTHONPATH=include .venv/bin/python scripts/bench_codec.py [runs]
"""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import UID, JPEG2000, JPEG2000Lossless

from dicom_relay.deid.pixels.codec import Frames

VARIANTS = [  # (name, how: a DCMTK command line or a pydicom transfer syntax, sources it applies to)
    ("native", None, ("US1_UNCR.dcm", "693_UNCR.dcm")),
    ("RLE", ["dcmcrle"], ("US1_UNCR.dcm", "693_UNCR.dcm")),
    ("JPEG-LS lossless", ["dcmcjpls"], ("US1_UNCR.dcm", "693_UNCR.dcm")),
    ("JPEG-LS near-lossless", ["dcmcjpls", "+en"], ("US1_UNCR.dcm",)),  # DCMTK refuses signed near-lossless
    ("JPEG 2000 lossless", JPEG2000Lossless, ("US1_UNCR.dcm", "693_UNCR.dcm")),
    ("JPEG 2000 (10:1)", JPEG2000, ("US1_UNCR.dcm", "693_UNCR.dcm")),
    ("JPEG lossless SV1", ["dcmcjpeg", "+e1"], ("US1_UNCR.dcm", "693_UNCR.dcm")),
    ("JPEG baseline", ["dcmcjpeg", "+eb"], ("US1_UNCR.dcm",)),
    ("JPEG extended 12-bit", ["dcmcjpeg", "+ee"], ("693_UNCR.dcm",)),
]


def _make(source: str, how, out: Path) -> bytes:
    if how is None or isinstance(how, UID):
        ds = pydicom.dcmread(get_testdata_file(source))
        if how is not None:
            ds.compress(how, j2k_cr=[10] if how == JPEG2000 else None, generate_instance_uid=False)
        ds.save_as(out, enforce_file_format=True)
    else:
        subprocess.run([*how, get_testdata_file(source), str(out)], check=True, timeout=120)
    return out.read_bytes()


def _run(data: bytes) -> tuple[float, float, float, str]:
    start = time.process_time()
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = Frames.decode(ds)
    decoded = time.process_time()
    frames.display(0)
    shown = time.process_time()
    frames.blank(0, [(20, 20, 220, 60)])
    written = frames.encode_into(ds)
    ds.save_as(io.BytesIO(), enforce_file_format=True)
    done = time.process_time()
    return decoded - start, shown - decoded, done - shown, written


def main(runs: int = 15) -> None:
    print(f"{'source':14} {'input':24} {'written':26} {'decode':>8} {'display':>8} {'encode':>8} {'total':>8} "
          f"{'frames/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, how, sources in VARIANTS:
            for source in sources:
                data = _make(source, how, Path(tmp) / "in.dcm")
                times = [_run(data) for _ in range(runs)]
                decode, display, encode = (statistics.median(t[i] for t in times) * 1000 for i in range(3))
                total = decode + display + encode
                print(f"{source:14} {name:24} {UID(times[0][3]).name[:26]:26} {decode:7.1f}ms {display:7.1f}ms "
                      f"{encode:7.1f}ms {total:7.1f}ms {1000 / total:8.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
