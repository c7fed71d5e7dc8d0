#!/usr/bin/env python
"""Benchmark the relay's de-identification against plain pydicom read+write and peer tools.

    python scripts/bench_deid.py                      # 500 instances, 512x512 16-bit CT; RSS at 500 and 2000
    python scripts/bench_deid.py --workers 2          # the relay with a process pool (large studies)
    python scripts/bench_deid.py --no-peers --rss-sizes 500

Each measurement runs in its own subprocess (so timings and peak memory do not mix); the child reports its
wall time and peak RSS (``getrusage(RUSAGE_SELF)``, plus ``RUSAGE_CHILDREN`` for pool workers), and the parent
prints files/s, the ratio to the plain pydicom read+write floor, and peak RSS. Peers (dicognito, Kitware
dicom-anonymizer, pydicom/deid) are optional: install them into the venv only to benchmark
(``.venv/bin/pip install dicognito dicom-anonymizer deid``); a missing one is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("relay", "pydicom", "dicognito", "dicom-anonymizer", "deid")
PEER_MODULES = {"dicognito": "dicognito", "dicom-anonymizer": "dicomanonymizer", "deid": "deid"}


# --- child side ------------------------------------------------------------------------------------------
def _relay_worker(args):
    from dicom_relay.deid import Deidentifier, PatientIdentity

    files, dst, accession = args
    d = Deidentifier("bench-secret")
    identity = PatientIdentity("BENCHPATIENT", -17, {accession: "ACCBENCH"})
    for f in files:
        d.deidentify_file(Path(f), Path(dst), identity)
    return len(files)


def child(mode: str, src: Path, dst: Path, workers: int) -> dict:
    import pydicom

    files = sorted(src.glob("*.dcm"))
    dst.mkdir(parents=True, exist_ok=True)
    accession = str(pydicom.dcmread(files[0], stop_before_pixels=True).get("AccessionNumber", ""))
    t0 = time.perf_counter()
    if mode == "relay":
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            chunks = [[str(f) for f in files[i::workers]] for i in range(workers)]
            with ProcessPoolExecutor(workers) as pool:
                sum(pool.map(_relay_worker, [(c, str(dst), accession) for c in chunks]))
        else:
            _relay_worker(([str(f) for f in files], str(dst), accession))
    elif mode == "pydicom":
        for f in files:
            pydicom.dcmread(f).save_as(dst / f.name)
    elif mode == "dicognito":
        from dicognito.anonymizer import Anonymizer

        a = Anonymizer()
        for f in files:
            ds = pydicom.dcmread(f)
            a.anonymize(ds)
            ds.save_as(dst / f.name)
    elif mode == "dicom-anonymizer":
        from dicomanonymizer import anonymize_dicom_file

        for f in files:
            anonymize_dicom_file(str(f), str(dst / f.name))
    elif mode == "deid":
        from deid.dicom import replace_identifiers

        replace_identifiers(dicom_files=[str(f) for f in files], output_folder=str(dst), overwrite=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"files": len(files), "seconds": seconds, "rss_kb": max(self_rss, kids_rss)}


# --- parent side -----------------------------------------------------------------------------------------
def measure(mode: str, src: Path, work: Path, workers: int = 1) -> dict | None:
    if mode in PEER_MODULES:
        probe = subprocess.run([sys.executable, "-c", f"import {PEER_MODULES[mode]}"], capture_output=True)
        if probe.returncode != 0:
            print(f"  {mode:17s} not installed (pip install {mode} into the venv to compare)")
            return None
    dst = work / f"out-{mode}"
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", mode, "--src", str(src), "--dst", str(dst), "--workers", str(workers)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(dst, ignore_errors=True)
    if out.returncode != 0:
        print(f"  {mode:17s} FAILED: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="benchmark de-identification")
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--rss-sizes", default="500,2000", help="study sizes for the peak-RSS measurement of the relay")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for the relay and pydicom timings")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.src, args.dst, args.workers)))
        return 0

    from dicom_relay.samples import generate_ct_study

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-deid-"))
    try:
        src = work / f"study-{args.instances}"
        print(f"generating a {args.instances}-instance 512x512 16-bit CT study in {src} ...")
        generate_ct_study(src, n_instances=args.instances, n_series=2, seed="bench")
        print(f"\nthroughput, {args.instances} instances, {args.workers} worker(s) for the relay, best of {args.repeat}:")
        results = {}
        for mode in MODES:
            if args.no_peers and mode in PEER_MODULES:
                continue
            reps = args.repeat if mode in ("relay", "pydicom") else 1
            runs = [r for r in (measure(mode, src, work, args.workers if mode == "relay" else 1) for _ in range(reps)) if r]
            if runs:
                results[mode] = min(runs, key=lambda r: r["seconds"])
        floor = results.get("pydicom")
        relay = results.get("relay")
        for mode, r in results.items():
            rate = r["files"] / r["seconds"]
            vs_floor = f"{rate / (floor['files'] / floor['seconds']):5.2f}x pydicom" if floor else ""
            vs_relay = f"relay is {(relay['files'] / relay['seconds']) / rate:5.2f}x faster" if relay and mode != "relay" else ""
            print(f"  {mode:17s} {rate:8.1f} files/s  {r['seconds']:7.2f} s  peak RSS {r['rss_kb'] / 1024:7.1f} MiB  {vs_floor}  {vs_relay}")
        print("\npeak RSS of the relay by study size:")
        for n in [int(x) for x in args.rss_sizes.split(",") if x.strip()]:
            study = src if n == args.instances else work / f"study-{n}"
            if n != args.instances:
                generate_ct_study(study, n_instances=n, n_series=2, seed=f"bench{n}")
            r = measure("relay", study, work, args.workers)
            if r:
                print(f"  {n:6d} instances: {r['files'] / r['seconds']:8.1f} files/s, peak RSS {r['rss_kb'] / 1024:7.1f} MiB")
            if study != src:
                shutil.rmtree(study, ignore_errors=True)
        print(f"\n(children's max RSS seen by this process: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f} MiB)")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
