"""Micro-bench of the relay's two send clients: CPU per item and rate, on N generated CT slices.

Starts a private Orthanc and fake-gcs-server (tests.support.stack, as the integration tests do), generates N
512x512 CT instances once, then sends them as the pipeline's steps do:

- orthanc: ``OrthancDestination.store`` (C-STORE, the relay's associations) between two ``study_instances``
  queries (what Orthanc holds before, the verification after);
- gcs: ``GcsDestination.upload`` of every file from ``pipeline.GCS_PARALLEL_UPLOADS`` threads (``BENCH_GCS_THREADS``
  to try another number) into a new bucket.

Per round it prints the wall time, items/s, and the CPU this process spent per item (``time.process_time``: every
thread of the client, not the services). ``--profile`` writes a cProfile of the last round per destination.

    PYTHONPATH=$PWD/include:$PWD .venv/bin/python scripts/bench_send.py --n 500 --rounds 3 [--profile DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from dicom_relay.destinations.gcs import GcsDestination
from dicom_relay.destinations.orthanc import OrthancDestination
from dicom_relay.pipeline import GCS_PARALLEL_UPLOADS
GCS_PARALLEL_UPLOADS = int(os.environ.get("BENCH_GCS_THREADS", GCS_PARALLEL_UPLOADS))
from tests.support.samples import generate_ct_study
from tests.support.stack.gcs import start_gcs_emulator
from tests.support.stack.orthanc import start_orthanc


def measure(label: str, n: int, fn, profile_to: Path | None) -> dict:
    prof = cProfile.Profile(time.thread_time) if profile_to else None
    # cProfile sees one thread: every thread started during the round (upload workers, associations, pynetdicom's
    # reactor threads) gets its own profiler, merged afterwards.
    thread_profiles: list[cProfile.Profile] = []

    def start_thread_profile(*_):
        p = cProfile.Profile(time.thread_time)  # CPU time of the thread, not time spent waiting
        thread_profiles.append(p)
        p.enable()

    wall, cpu = time.perf_counter(), time.process_time()
    if prof:
        threading.setprofile(start_thread_profile)
        prof.enable()
    fn()
    if prof:
        prof.disable()
        threading.setprofile(None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    load = os.getloadavg()[0]
    print(f"  {label:8s} {n / wall:7.1f} /s  wall {wall:6.2f} s  client CPU {cpu * 1000 / n:5.2f} ms/item"
          f"  (load {load:.2f})" + ("  [profiled]" if prof else ""), flush=True)
    if prof:
        profile_to.mkdir(parents=True, exist_ok=True)
        out = profile_to / f"{label}.prof"
        stats = pstats.Stats(prof)
        for p in thread_profiles:
            stats.add(p)
        stats.dump_stats(out)
        stats.sort_stats("tottime").print_stats(30)
    return {"wall": wall, "cpu_ms_per_item": cpu * 1000 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("orthanc", "gcs"), default=None)
    ap.add_argument("--associations", type=int, default=None, help="Orthanc associations (default: the relay's)")
    ap.add_argument("--profile", type=Path, default=None, help="directory for cProfile output of the last round")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        tmp = Path(tmp)
        files = sorted(generate_ct_study(tmp / "study", n_instances=args.n, rows=512, columns=512).folder.glob("*.dcm"))
        n = len(files)
        orthanc = start_orthanc(tmp / "orthanc", password=secrets.token_urlsafe(16))
        gcs_emulator = start_gcs_emulator(tmp / "gcs")
        try:
            dest = OrthancDestination(orthanc.host, orthanc.dicom_port, orthanc.ae_title, "RELAY", orthanc.url,
                                      orthanc.user, orthanc.password)
            if args.associations:
                dest.associations = args.associations
            gcs = GcsDestination("unused", project="bench", emulator_host=gcs_emulator.host)
            from pydicom import dcmread

            study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            print(f"{n} files, {sum(f.stat().st_size for f in files) / n / 1024:.0f} KiB each", flush=True)
            for r in range(args.rounds):
                profile_to = args.profile if r == args.rounds - 1 else None
                if args.only in (None, "orthanc"):
                    for s in requests.get(f"{orthanc.url}/studies", auth=orthanc.auth, timeout=60).json():
                        requests.delete(f"{orthanc.url}/studies/{s}", auth=orthanc.auth, timeout=60)

                    def send_orthanc():
                        dest.study_instances(study_uid)
                        report = dest.store(files)
                        assert report.ok, report.failure_messages()[:3]
                        assert len(dest.study_instances(study_uid)) == n

                    measure("orthanc", n, send_orthanc, profile_to)
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
        finally:
            orthanc.process.stop()
            gcs_emulator.stop()


if __name__ == "__main__":
    main()
