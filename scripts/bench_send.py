"""Micro-bench of the relay's two send clients: CPU per item and rate, on N generated CT slices.

Starts a private Orthanc and fake-gcs-server (tests.support.stack, as the integration tests do), generates N
512x512 CT instances once, then sends them as the pipeline's steps do:

- orthanc-rest / orthanc-dicom: ``OrthancDestination.store`` over each transport (``rest``: POST /instances from
  the relay's workers; ``dicom``: C-STORE over the relay's associations) between two ``study_instances`` queries
  (what Orthanc holds before, the verification after), into an emptied Orthanc;
- rest-anchor: the anchor of ``scripts/bench_e2e.py``, 4 threads of plain ``requests`` POST /instances (one
  session per thread), no verification, into an emptied Orthanc;
- gcs: ``GcsDestination.upload`` of every file from ``pipeline.GCS_PARALLEL_UPLOADS`` threads (``BENCH_GCS_THREADS``
  to try another number) into a new bucket.

Per round it prints the wall time, items/s, the CPU this process spent per item (``time.process_time``: every
thread of the client, not the services), Orthanc's CPU per item (its process, psutil) and the load average. The
three Orthanc runs alternate their order from round to round, and each round prints the relay's rates as ratios
to the anchor of the same round; the end prints the median ratios. ``--profile`` writes a cProfile of the last
round per client.

    PYTHONPATH=$PWD/include:$PWD .venv/bin/python scripts/bench_send.py --n 500 --rounds 3 [--only orthanc]
        [--rest-workers 8] [--profile DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import secrets
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from dicom_relay.destinations.gcs import GcsDestination
from dicom_relay.destinations.orthanc import OrthancDestination
from dicom_relay.pipeline import GCS_PARALLEL_UPLOADS
GCS_PARALLEL_UPLOADS = int(os.environ.get("BENCH_GCS_THREADS", GCS_PARALLEL_UPLOADS))
from tests.support.samples import generate_ct_study
from tests.support.stack.gcs import start_gcs_emulator
from tests.support.stack.orthanc import start_orthanc


def measure(label: str, n: int, fn, profile_to: Path | None, service: psutil.Process | None = None) -> dict:
    prof = cProfile.Profile(time.thread_time) if profile_to else None
    # cProfile sees one thread: every thread started during the round (upload workers, associations, pynetdicom's
    # reactor threads) gets its own profiler, merged afterwards.
    thread_profiles: list[cProfile.Profile] = []

    def start_thread_profile(*_):
        p = cProfile.Profile(time.thread_time)  # CPU time of the thread, not time spent waiting
        thread_profiles.append(p)
        p.enable()

    service_cpu = _cpu(service)
    wall, cpu = time.perf_counter(), time.process_time()
    if prof:
        threading.setprofile(start_thread_profile)
        prof.enable()
    fn()
    if prof:
        prof.disable()
        threading.setprofile(None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    service_ms = (_cpu(service) - service_cpu) * 1000 / n if service else None
    load = os.getloadavg()[0]
    print(f"  {label:13s} {n / wall:7.1f} /s  wall {wall:6.2f} s  client CPU {cpu * 1000 / n:5.2f} ms/item"
          + (f"  Orthanc CPU {service_ms:5.2f} ms/item" if service_ms is not None else "")
          + f"  (load {load:.2f})" + ("  [profiled]" if prof else ""), flush=True)
    if prof:
        profile_to.mkdir(parents=True, exist_ok=True)
        out = profile_to / f"{label}.prof"
        stats = pstats.Stats(prof)
        for p in thread_profiles:
            stats.add(p)
        stats.dump_stats(out)
        stats.sort_stats("tottime").print_stats(30)
    return {"wall": wall, "per_second": n / wall, "cpu_ms_per_item": cpu * 1000 / n, "service_ms_per_item": service_ms,
            "load": load}


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def rest_anchor(orthanc, files: list[Path], threads: int = 4) -> None:
    """The anchor of scripts/bench_e2e.py (anchor_orthanc_rest): 4 threads of plain requests, a session each."""
    local = threading.local()

    def post(path: Path) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.auth = orthanc.auth
        r = local.session.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=60,
                               headers={"Content-Type": "application/dicom"})
        r.raise_for_status()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, files))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("orthanc", "gcs"), default=None)
    ap.add_argument("--transports", default="rest,dicom", help="the relay's Orthanc transports to run (rest,dicom)")
    ap.add_argument("--associations", type=int, default=None, help="Orthanc associations (default: the relay's)")
    ap.add_argument("--rest-workers", default="",
                    help="REST workers, or several to compare in the same rounds: 4,8 (default: the relay's)")
    ap.add_argument("--profile", type=Path, default=None, help="directory for cProfile output of the last round")
    args = ap.parse_args()
    transports = [t for t in args.transports.split(",") if t]

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        tmp = Path(tmp)
        files = sorted(generate_ct_study(tmp / "study", n_instances=args.n, rows=512, columns=512).folder.glob("*.dcm"))
        n = len(files)
        orthanc = start_orthanc(tmp / "orthanc", password=secrets.token_urlsafe(16))
        gcs_emulator = start_gcs_emulator(tmp / "gcs")
        orthanc_process = psutil.Process(orthanc.process.pid())
        try:
            dests = {}
            rest_workers = [int(w) for w in args.rest_workers.split(",") if w]
            for transport in transports:
                for workers in (rest_workers or [None]) if transport == "rest" else [None]:
                    dest = OrthancDestination(orthanc.host, orthanc.dicom_port, orthanc.ae_title, "RELAY",
                                              orthanc.url, orthanc.user, orthanc.password, transport=transport)
                    if args.associations:
                        dest.associations = args.associations
                    if workers:
                        dest._rest_store.workers = workers
                    label = f"orthanc-{transport}" + (f"-{workers}" if len(rest_workers) > 1 and workers else "")
                    dests[label] = dest
            gcs = GcsDestination("unused", project="bench", emulator_host=gcs_emulator.host)
            from pydicom import dcmread

            study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            print(f"{n} files, {sum(f.stat().st_size for f in files) / n / 1024:.0f} KiB each; "
                  f"{os.cpu_count()} cores", flush=True)
            ratios: dict[str, list[float]] = {label: [] for label in dests}

            def empty_orthanc() -> None:
                for s in requests.get(f"{orthanc.url}/studies", auth=orthanc.auth, timeout=60).json():
                    requests.delete(f"{orthanc.url}/studies/{s}", auth=orthanc.auth, timeout=60)

            def relay_send(dest: OrthancDestination):
                def send_orthanc():
                    dest.study_instances(study_uid)
                    report = dest.store(files)
                    assert report.ok, report.failure_messages()[:3]
                    assert len(dest.study_instances(study_uid)) == n
                return send_orthanc

            for r in range(args.rounds):
                profile_to = args.profile if r == args.rounds - 1 else None
                if args.only in (None, "orthanc"):
                    runs = [("rest-anchor", lambda: rest_anchor(orthanc, files))]
                    runs += [(label, relay_send(dest)) for label, dest in dests.items()]
                    runs = runs[r % len(runs):] + runs[: r % len(runs)]  # alternate the order between rounds
                    results = {}
                    for label, fn in runs:
                        empty_orthanc()
                        results[label] = measure(label, n, fn, profile_to, orthanc_process)
                    anchor = results["rest-anchor"]["per_second"]
                    line = []
                    for label in dests:
                        ratios[label].append(results[label]["per_second"] / anchor)
                        line.append(f"{label} {ratios[label][-1]:.2f}x")
                    print(f"  round {r + 1}: of the REST anchor: " + ", ".join(line), flush=True)
                if args.only in (None, "gcs"):
                    bucket = f"bench-{uuid.uuid4().hex[:8]}"
                    gcs_emulator.create_bucket(bucket)
                    gcs.bucket_name = bucket

                    def send_gcs():
                        def one(path: Path):
                            result = gcs.upload(path, f"studies/P/1/2/{path.stem}.dcm", {"batch_id": "b", "x": "y"})
                            assert result.verified and not result.skipped
                        with ThreadPoolExecutor(GCS_PARALLEL_UPLOADS) as pool:
                            list(pool.map(one, files))

                    measure("gcs", n, send_gcs, profile_to)
            if args.only in (None, "orthanc"):
                print("median ratio to the REST anchor (same rounds): " + ", ".join(
                    f"{label} {statistics.median(values):.2f}x" for label, values in ratios.items()), flush=True)
        finally:
            orthanc.process.stop()
            gcs_emulator.stop()


if __name__ == "__main__":
    main()
