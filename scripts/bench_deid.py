#!/usr/bin/env python
"""Benchmark the relay's de-identification against plain pydicom read+write and peer tools.

    python scripts/bench_deid.py                      # 500 instances, 512x512 16-bit CT; RSS at 500 and 2000;
                                                      # the relay also with a pool of one process per core
    python scripts/bench_deid.py --workers 1          # one core only
    python scripts/bench_deid.py --no-peers --rss-sizes 500
    python scripts/bench_deid.py --only user-path     # the floor, the engine, the CLI and the pipeline step

The path a user runs is measured too, against the same floor: ``cli`` is ``dicom-relay deidentify IN OUT`` in a
subprocess, end to end (interpreter start, index, pseudonyms, de-identification, verification, one core), and
``step`` is the pipeline's ``replace_identifiers`` on a claimed, imported batch with its PostgreSQL status store
(a throwaway cluster started for the run) and ``RELAY_DEID_WORKERS`` = ``--workers``. Goals: cli >= 2.0x the
floor, step >= 2.0x on two cores.

Which floor: the cli is timed from its process start, so it is compared with the floor run the same way,
``pydicom-cli``: a new interpreter that imports pydicom and reads+writes every file (``FLOOR_COMMAND``). The
in-process ``pydicom`` floor (timed after its import, like the engine and the step, which run inside a process
that has started already) is the floor of ``relay`` and ``step``; the cli's ratio to it is printed too.
``--baseline TREE`` measures relay, cli, cli start-up and step of another checkout in the same rounds, so that
before and after share one run's load. Besides wall time, each child reports its CPU time (user + system, its
own children included): on a shared machine the files per CPU-second are the steadier figure.

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

MODES = ("relay", "relay+verify", "pydicom", "pydicom-cli", "cli", "cli-startup", "step", "dicognito", "dicom-anonymizer", "deid")
USER_PATH = ("pydicom", "pydicom-cli", "relay", "cli", "cli-startup", "step")
GOALS = {"cli": 2.0, "step": 2.0}
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


def _cli(src: Path, dst: Path) -> None:
    """``dicom-relay deidentify`` as a user runs it: a new interpreter, verification on, one process."""
    env = {**os.environ, "RELAY_SECRET_KEY": "bench-secret"}
    out = subprocess.run([sys.executable, "-m", "dicom_relay.cli", "deidentify", str(src), str(dst)], env=env,
                         capture_output=True, text=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
    if out.returncode != 0 or summary.get("leaks"):
        raise SystemExit(f"dicom-relay deidentify failed ({out.returncode}): {out.stderr.strip()[-300:]}")


#: The floor as a command: a new interpreter that imports pydicom and reads and writes every file of the folder.
#: The cli is timed from its process start, so its floor is too (same interpreter start, same pydicom import).
FLOOR_COMMAND = (
    "import sys; from pathlib import Path; import pydicom\n"
    "src, dst = Path(sys.argv[1]), Path(sys.argv[2]); dst.mkdir(parents=True, exist_ok=True)\n"
    "for f in sorted(src.glob('*.dcm')):\n"
    "    pydicom.dcmread(f).save_as(dst / f.name)\n"
)


def _floor_command(src: Path, dst: Path) -> None:
    out = subprocess.run([sys.executable, "-c", FLOOR_COMMAND, str(src), str(dst)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the floor command failed ({out.returncode}): {out.stderr.strip()[-300:]}")


def _step_batch(src: Path, dst: Path, db_url: str, workers: int):
    """A claimed, imported batch with its identifiers (not timed); returns (batch id, settings)."""
    from dicom_relay import pipeline
    from dicom_relay.config import Settings

    settings = Settings.from_env({
        "RELAY_INBOX": str(dst / "inbox"), "RELAY_WORK_DIR": str(dst / "relay"), "RELAY_DB_URL": db_url,
        "RELAY_SECRET_KEY": "bench-secret", "RELAY_STABLE_SECONDS": "0", "RELAY_DEID_WORKERS": str(workers),
        # Every step refuses to start without the secrets a run needs (sending to Orthanc is on by default); this
        # one sends nothing.
        "ORTHANC_PASSWORD": "bench-orthanc-password",
    })
    (dst / "inbox").mkdir(parents=True)
    # Hard links: the batch folder is claimed (moved) and read, never written; no 250 MB copy per run.
    shutil.copytree(src, dst / "inbox" / "BENCH", copy_function=os.link)
    [run] = pipeline.claim_finished_folders(settings)
    batch_id = run["conf"]["batch_id"]
    pipeline.import_batch(batch_id, settings)
    pipeline.get_identifiers(batch_id, settings)
    return batch_id, settings


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child(mode: str, src: Path, dst: Path, workers: int, db_url: str | None = None) -> dict:
    import pydicom

    files = sorted(src.glob("*.dcm"))
    dst.mkdir(parents=True, exist_ok=True)
    accession = str(pydicom.dcmread(files[0], stop_before_pixels=True).get("AccessionNumber", ""))
    if mode == "step":
        from dicom_relay import pipeline

        batch_id, settings = _step_batch(src, dst, db_url, workers)
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    if mode == "cli":
        _cli(src, dst / "out")
    elif mode == "pydicom-cli":
        _floor_command(src, dst / "out")
    elif mode == "cli-startup":  # the same command on an empty folder: interpreter, imports, nothing to do
        (dst / "empty").mkdir()
        _cli(dst / "empty", dst / "out")
    elif mode == "step":
        summary = pipeline.replace_identifiers(batch_id, settings)
        if summary.get("deidentified") != len(files) or not summary.get("verified_no_leak"):
            raise SystemExit(f"replace_identifiers: {summary}")
    elif mode in ("relay", "relay+verify"):
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
    cpu = _cpu_seconds() - cpu0
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"files": len(files), "seconds": seconds, "cpu_seconds": cpu, "rss_kb": max(self_rss, kids_rss)}


# --- parent side -----------------------------------------------------------------------------------------
def measure(mode: str, src: Path, work: Path, workers: int = 1, db_url: str | None = None,
            tree: Path | None = None) -> dict | None:
    if mode in PEER_MODULES:
        probe = subprocess.run([sys.executable, "-c", f"import {PEER_MODULES[mode]}"], capture_output=True)
        if probe.returncode != 0:
            print(f"  {mode:17s} not installed (pip install {mode} into the venv to compare)")
            return None
    dst = work / f"out-{mode}{'-base' if tree else ''}"
    shutil.rmtree(dst, ignore_errors=True)
    # Write back the previous run's files (and the generated study) first: otherwise the kernel flushes them
    # during the next measurement, whichever tool that is.
    os.sync()
    cmd = [sys.executable, __file__, "--child", mode, "--src", str(src), "--dst", str(dst), "--workers", str(workers)]
    if db_url:
        cmd += ["--db-url", db_url]
    env = None
    if tree is not None:  # the same measurement of another checkout (its dicom_relay and tests.support)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "include"), str(tree)])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
    ap.add_argument("--only", choices=("all", "user-path"), default="all",
                    help="user-path: only the floor, the engine, the CLI and the pipeline step (no peers, no RSS table)")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None, metavar="TREE",
                    help="also measure relay, cli, cli-startup and step with the dicom_relay of another checkout "
                         "(e.g. `git worktree add /tmp/base main`), in the same rounds: before/after in one run")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--db-url", help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.src, args.dst, args.workers, args.db_url)))
        return 0

    from tests.support.samples import generate_ct_study

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-deid-"))
    postgres = None
    try:
        src = work / f"study-{args.instances}"
        print(f"generating a {args.instances}-instance 512x512 16-bit CT study in {src} ...")
        generate_ct_study(src, n_instances=args.instances, n_series=2, seed="bench")
        print(f"\nthroughput, {args.instances} instances, one core unless stated, {args.repeat} runs of the relay and "
              f"pydicom (ratios use the best), one run of each peer:")
        # Round robin (relay, relay+verify, pydicom, pool; peers in the first round only), so that load from
        # other processes on the machine spreads over every tool instead of hitting one tool's runs.
        if args.only == "user-path":
            plan = list(USER_PATH)
        else:
            plan = [m for m in MODES if not (args.no_peers and m in PEER_MODULES)]
        db_url = None
        if "step" in plan:
            # The step needs its status store: a throwaway PostgreSQL cluster (fsync off) for this run only.
            from tests.support.stack.postgres import start_postgres

            pg_dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
            postgres = start_postgres(pg_dir, durable=False)
            db_url = postgres.url("relay")
            from dicom_relay.status import StatusStore

            StatusStore(db_url).migrate()  # what `dicom-relay migrate` does once at start
        pool_mode = f"relay, {args.workers} workers"
        step_mode = f"step, {args.workers} workers"
        base = args.baseline.resolve() if args.baseline else None
        based = {f"{m} (baseline)": m for m in ("relay", "cli", "cli-startup") if m in plan}
        if base and "step" in plan:
            based[f"{step_mode} (baseline)"] = "step"
        runs_by_mode: dict[str, list[dict]] = {}
        for round_ in range(args.repeat):
            for mode in [m for m in plan if m != "step"] + ([pool_mode] if args.workers > 1 and args.only == "all" else []) \
                    + ([step_mode] if "step" in plan else []) + (list(based) if base else []):
                if mode in PEER_MODULES and round_ > 0:
                    continue
                if mode in based:
                    r = measure(based[mode], src, work, args.workers if based[mode] == "step" else 1, db_url, base)
                elif mode == pool_mode:
                    r = measure("relay", src, work, args.workers)
                elif mode == step_mode:
                    r = measure("step", src, work, args.workers, db_url)
                else:
                    r = measure(mode, src, work, 1)
                if r:
                    runs_by_mode.setdefault(mode, []).append(r)
        results = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in runs_by_mode.items()}
        median = {m: statistics.median(r["files"] / r["seconds"] for r in rs) for m, rs in runs_by_mode.items()}
        rate = {m: r["files"] / r["seconds"] for m, r in results.items()}
        peers = [m for m in PEER_MODULES if m in rate]
        fastest_peer = max(peers, key=lambda m: rate[m]) if peers else None
        print()
        # Files per CPU-second (best run): steadier than wall time when other processes share the cores.
        per_cpu = {m: max(r["files"] / max(r["cpu_seconds"], 1e-9) for r in rs) for m, rs in runs_by_mode.items()}
        print("| tool | files/s (best) | files/s (median) | runs | peak RSS (MiB) | x pydicom read+write | "
              "files/CPU-s | x floor per CPU-s | relay (1 core) is x faster |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode, r in results.items():
            if mode.startswith("cli-startup"):
                continue  # a fixed cost, not a throughput: see below the table
            vs_floor = f"{rate[mode] / rate['pydicom']:.2f}" if "pydicom" in rate else ""
            cpu_floor = f"{per_cpu[mode] / per_cpu['pydicom']:.2f}" if "pydicom" in per_cpu else ""
            vs = f"{rate['relay'] / rate[mode]:.2f}" if "relay" in rate and not mode.startswith("relay") else ""
            print(f"| {mode} | {rate[mode]:.0f} | {median[mode]:.0f} | {len(runs_by_mode[mode])} | "
                  f"{r['rss_kb'] / 1024:.0f} | {vs_floor} | {per_cpu[mode]:.0f} | {cpu_floor} | {vs} |")
        if "pydicom" in rate:
            # Each is compared with the floor measured on equal terms: the engine and the step (called inside a
            # running process) with the in-process floor ``pydicom``; the cli (a command, timed from its process
            # start) with ``pydicom-cli``, the floor as a command (same interpreter start, same pydicom import).
            print("\nthe path a user runs, against the pydicom read+write floor of this run (best runs):")
            for mode, goal, floor_mode in (("relay", None, "pydicom"), ("cli", GOALS["cli"], "pydicom-cli"),
                                           (step_mode, GOALS["step"], "pydicom")):
                if mode in rate and floor_mode in rate:
                    ratio = rate[mode] / rate[floor_mode]
                    verdict = "" if goal is None else f" (goal {goal:.1f}x: {'met' if ratio >= goal else 'NOT met'})"
                    print(f"  {mode:18s} {ratio:.2f}x the floor ({floor_mode}){verdict}; per CPU-second "
                          f"{per_cpu[mode] / per_cpu[floor_mode]:.2f}x")
            for mode, floor_mode in ((m, "pydicom-cli" if based[m] == "cli" else "pydicom") for m in based):
                if mode in rate and floor_mode in rate and based[mode] != "cli-startup":
                    print(f"  {mode:18s} {rate[mode] / rate[floor_mode]:.2f}x the floor ({floor_mode}); per CPU-second "
                          f"{per_cpu[mode] / per_cpu[floor_mode]:.2f}x")
            if "cli-startup (baseline)" in results:
                print(f"  cli start-up (baseline): {results['cli-startup (baseline)']['cpu_seconds']:.2f} CPU-s")
            if "cli" in rate:
                print(f"  {'cli':18s} {rate['cli'] / rate['pydicom']:.2f}x the in-process floor (pydicom: no "
                      f"interpreter start or import timed); per CPU-second {per_cpu['cli'] / per_cpu['pydicom']:.2f}x")
            if "cli" in results and "cli-startup" in results:
                fixed = results["cli-startup"]
                work = results["cli"]["seconds"] - fixed["seconds"]
                work_cpu = results["cli"]["cpu_seconds"] - fixed["cpu_seconds"]
                floor = results["pydicom"]
                print(f"  cli start-up (an empty folder): {fixed['seconds']:.2f} s, {fixed['cpu_seconds']:.2f} CPU-s; "
                      f"without it the cli is {floor['seconds'] / work:.2f}x the in-process floor "
                      f"({floor['cpu_seconds'] / work_cpu:.2f}x per CPU-second)")
        if fastest_peer and "relay" in rate:
            print(f"\nrelay vs the fastest peer ({fastest_peer}): {rate['relay'] / rate[fastest_peer]:.2f}x; "
                  f"vs the pydicom floor: {rate['relay'] / rate.get('pydicom', float('nan')):.2f}x")
        if "relay+verify" in rate and "relay" in rate:
            per_file = 1e3 * (1 / rate["relay+verify"] - 1 / rate["relay"])
            print(f"verification (LeakCheck.add per original + find_leaks over the outputs): {per_file:.2f} ms/file")
        if args.only == "user-path":
            return 0
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
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
