#!/usr/bin/env python
"""Benchmark the relay's de-identification against plain pydicom read+write and peer tools.

    python scripts/bench_deid.py                      # 500 instances, 512x512 16-bit CT; RSS at 500 and 2000;
                                                      # the relay also with a pool of one process per core
    python scripts/bench_deid.py --workers 1          # one core only
    python scripts/bench_deid.py --no-peers --rss-sizes 500

Each measurement runs in its own subprocess (so timings and peak memory do not mix); the child reports its
wall time and peak RSS (``getrusage(RUSAGE_SELF)``, plus ``RUSAGE_CHILDREN`` for pool workers), and the parent
prints a Markdown table: files/s, the ratio to the plain pydicom read+write floor, how much faster the relay
(one core) is than each peer, and peak RSS. ``relay+verify`` adds the verification the pipeline runs
(``LeakCheck.add`` on each original, ``find_leaks`` over the outputs). Peers (dicognito, Kitware
dicom-anonymizer, pydicom/deid) are optional: install them into the venv only to benchmark
(``.venv/bin/pip install dicognito dicom-anonymizer deid``); a missing one is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("relay", "relay+verify", "pydicom", "dicognito", "dicom-anonymizer", "deid")
PEER_MODULES = {"dicognito": "dicognito", "dicom-anonymizer": "dicomanonymizer", "deid": "deid"}


# --- child side ------------------------------------------------------------------------------------------
def _relay_worker(args):
    from dicom_relay.deid import Deidentifier, LeakCheck, PatientIdentity

    files, dst, accession, verify = args
    d = Deidentifier("bench-secret")
    identity = PatientIdentity("BENCHPATIENT", -17, {accession: "ACCBENCH"})
    check = LeakCheck(d.options) if verify else None
    for f in files:
        r = d.deidentify_file(Path(f), Path(dst), identity)
        if check is not None:
            check.add(Path(f), identity, r.path)  # what the pipeline does: values of the original, output mapped
    if check is not None and check.find_leaks():
        raise SystemExit("verification found leaks")
    if d.raw_path_used != len(files):
        print(f"warning: {len(files) - d.raw_path_used} file(s) took the pydicom path", file=sys.stderr)
    return len(files)


def child(mode: str, src: Path, dst: Path, workers: int) -> dict:
    import pydicom

    files = sorted(src.glob("*.dcm"))
    dst.mkdir(parents=True, exist_ok=True)
    accession = str(pydicom.dcmread(files[0], stop_before_pixels=True).get("AccessionNumber", ""))
    t0 = time.perf_counter()
    if mode in ("relay", "relay+verify"):
        verify = mode == "relay+verify"
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            chunks = [[str(f) for f in files[i::workers]] for i in range(workers)]
            with ProcessPoolExecutor(workers) as pool:
                sum(pool.map(_relay_worker, [(c, str(dst), accession, verify) for c in chunks]))
        else:
            _relay_worker(([str(f) for f in files], str(dst), accession, verify))
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
    # Write back the previous run's files (and the generated study) first: otherwise the kernel flushes them
    # during the next measurement, whichever tool that is.
    os.sync()
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
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="also measure the relay with a pool of N processes (default: the machine's cores)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the relay and pydicom timings")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.src, args.dst, args.workers)))
        return 0

    from tests.support.samples import generate_ct_study

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-deid-"))
    try:
        src = work / f"study-{args.instances}"
        print(f"generating a {args.instances}-instance 512x512 16-bit CT study in {src} ...")
        generate_ct_study(src, n_instances=args.instances, n_series=2, seed="bench")
        print(f"\nthroughput, {args.instances} instances, one core unless stated, {args.repeat} runs of the relay and "
              f"pydicom (ratios use the best), one run of each peer:")
        # Round robin (relay, relay+verify, pydicom, pool; peers in the first round only), so that load from
        # other processes on the machine spreads over every tool instead of hitting one tool's runs.
        plan = [m for m in MODES if not (args.no_peers and m in PEER_MODULES)]
        pool_mode = f"relay, {args.workers} workers"
        runs_by_mode: dict[str, list[dict]] = {}
        for round_ in range(args.repeat):
            for mode in plan + ([pool_mode] if args.workers > 1 else []):
                if mode in PEER_MODULES and round_ > 0:
                    continue
                r = measure("relay" if mode == pool_mode else mode, src, work, args.workers if mode == pool_mode else 1)
                if r:
                    runs_by_mode.setdefault(mode, []).append(r)
        results = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in runs_by_mode.items()}
        median = {m: statistics.median(r["files"] / r["seconds"] for r in rs) for m, rs in runs_by_mode.items()}
        rate = {m: r["files"] / r["seconds"] for m, r in results.items()}
        peers = [m for m in PEER_MODULES if m in rate]
        fastest_peer = max(peers, key=lambda m: rate[m]) if peers else None
        print()
        print("| tool | files/s (best) | files/s (median) | runs | peak RSS (MiB) | x pydicom read+write | relay (1 core) is x faster |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mode, r in results.items():
            vs_floor = f"{rate[mode] / rate['pydicom']:.2f}" if "pydicom" in rate else ""
            vs = f"{rate['relay'] / rate[mode]:.2f}" if "relay" in rate and not mode.startswith("relay") else ""
            print(f"| {mode} | {rate[mode]:.0f} | {median[mode]:.0f} | {len(runs_by_mode[mode])} | "
                  f"{r['rss_kb'] / 1024:.0f} | {vs_floor} | {vs} |")
        if fastest_peer and "relay" in rate:
            print(f"\nrelay vs the fastest peer ({fastest_peer}): {rate['relay'] / rate[fastest_peer]:.2f}x; "
                  f"vs the pydicom floor: {rate['relay'] / rate.get('pydicom', float('nan')):.2f}x")
        if "relay+verify" in rate and "relay" in rate:
            per_file = 1e3 * (1 / rate["relay+verify"] - 1 / rate["relay"])
            print(f"verification (LeakCheck.add per original + find_leaks over the outputs): {per_file:.2f} ms/file")
        print("\npeak RSS of the relay by study size:")
        print("| instances | mode | workers | files/s | peak RSS (MiB) |")
        print("|---:|---|---:|---:|---:|")
        for n in [int(x) for x in args.rss_sizes.split(",") if x.strip()]:
            study = src if n == args.instances else work / f"study-{n}"
            if n != args.instances:
                generate_ct_study(study, n_instances=n, n_series=2, seed=f"bench{n}")
            runs = [("relay", 1), ("relay+verify", 1)] + ([("relay", args.workers)] if args.workers > 1 else [])
            for mode, w in runs:
                r = measure(mode, study, work, w)
                if r:
                    print(f"| {n} | {mode} | {w} | {r['files'] / r['seconds']:.0f} | {r['rss_kb'] / 1024:.0f} |")
            if study != src:
                shutil.rmtree(study, ignore_errors=True)
        print(f"\n(children's max RSS seen by this process: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f} MiB)")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
