"""Airflow's own processes SIGKILLed mid-run on a real stack, then restarted; and the no-leak scan afterwards.

One stack for the module (PostgreSQL, Orthanc, GCS emulator, identifier service, Airflow 3 api-server, scheduler,
dag-processor, triggerer), with short heartbeat timeouts and retry delays so that Airflow notices a dead task in
seconds rather than minutes (see ``FAULT_ENV``). The tests share the stack and pass alone and in any order: the
checks of part 5 cover every study planted so far, and plant (and deliver) one of their own when none was:

1. the triggerer is killed while ``watch_inbox`` waits deferred; two studies arrive while it is down;
2. the scheduler (and with it every LocalExecutor worker and task it forked) is killed during ``replace_identifiers``;
3. the task process of ``replace_identifiers`` is killed half-way through the study;
4. the whole task (supervisor and task process) of ``send_orthanc`` is killed half-way through the study;
5. every folder had exactly one ``process_study`` run; nothing of what was planted leaked anywhere.

After each fault: every study ends ``DONE``, every instance is in Orthanc and in the bucket, none twice.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.support.samples import drop_atomically, generate_ct_study
from tests.support.faults import (
    airflow_task_processes,
    files_under,
    process_group_members,
    scan_files,
    scan_texts,
    sigkill,
    wait_gone,
)
from tests.support.stack.airflow import QUICK_RECOVERY_ENV
from tests.support.stack.gcs import emulator_client
from tests.support.stack.local import start_stack
from tests.support.stack.process import wait_until
from dicom_relay.status import StatusStore

from .helpers import delivery, orthanc_study_instances

pytestmark = pytest.mark.e2e

FAULT_ENV = {
    **QUICK_RECOVERY_ENV,
    # A dead scheduler's queued/running task instances are reset after 10 s (defaults 30 s / every 300 s).
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
    # A dead triggerer's triggers go to a live one after 10 s (default 30 s).
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
}
TASKS = ["import", "get_identifiers", "replace_identifiers", "send_orthanc", "send_gcs", "cleanup"]
BIG = 120  # instances of 512x512x16 bit: several seconds in replace_identifiers and send_orthanc


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with start_stack(tmp_path_factory.mktemp("fault-stack"), base_env=dict(FAULT_ENV)) as s:
        yield s


class Planted:
    """Every study dropped in this module: folder name -> SampleStudy."""

    studies: dict = {}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return tmp_path_factory.mktemp("fault-sources")


def drop(stack, sources: Path, name: str, patient_id: str, n: int, size: int = 64, n_series: int = 1):
    study = generate_ct_study(sources / name, patient_id=patient_id, n_instances=n, rows=size, columns=size,
                              n_series=n_series)
    drop_atomically(study.folder, Path(stack.env["RELAY_INBOX"]), name, suffix=".tmp0042")
    Planted.studies[name] = study
    return study


def store(stack) -> StatusStore:
    return StatusStore(stack.env["RELAY_DB_URL"])


def batch_of(stack, folder: str):
    s = store(stack)
    return next((b for b in s.list_batches(limit=200) if b.folder == folder), None)


def wait_batch_run(stack, folder: str, timeout: float = 120):
    """Wait until the folder is claimed and its batch has an Airflow run id; return the batch."""
    found = {}

    def claimed():
        b = batch_of(stack, folder)
        if b is not None and b.run_id:
            found["b"] = b
            return True
        return False

    wait_until(claimed, timeout, "claim of a dropped folder", interval=0.2)
    return found["b"]


def wait_done(stack, folders: list[str], timeout: float = 240):
    def finished():
        batches = [batch_of(stack, f) for f in folders]
        if any(b is not None and b.status == "ERROR" and not b.errors[-1]["transient"] for b in batches):
            raise AssertionError(f"a batch failed permanently: {[b.errors for b in batches if b]}")
        if not all(b is not None and b.status == "DONE" for b in batches):
            return False
        # cleanup marks the batch DONE a moment before Airflow marks the run a success.
        client = stack.airflow.client()
        return all(client.get(f"/dags/process_study/dagRuns/{b.run_id}")["state"] == "success" for b in batches)

    deadline = time.monotonic() + timeout
    while not finished():
        if time.monotonic() > deadline:
            states = {f: (b.status, b.errors[-3:]) if (b := batch_of(stack, f)) else None for f in folders}
            raise AssertionError(f"not DONE after {timeout:.0f}s: {json.dumps(states, default=str)[:3000]}")
        time.sleep(1)


def ti(stack, run_id: str, task_id: str) -> dict:
    return stack.airflow.client().get(f"/dags/process_study/dagRuns/{run_id}/taskInstances/{task_id}")


def verify(stack, folders: list[str], figures) -> None:
    """Each folder: DONE, exactly one process_study run (batch__<id>, success), complete delivery, no copy twice."""
    env = stack.env
    client = stack.airflow.client()
    runs = client.get("/dags/process_study/dagRuns", limit=200)["dag_runs"]
    for folder in folders:
        b = batch_of(stack, folder)
        study = Planted.studies[folder]
        d = delivery(env["RELAY_DB_URL"], b.batch_id, study, env["ORTHANC_URL"],
                     (env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]), env["STORAGE_EMULATOR_HOST"],
                     env["RELAY_GCS_BUCKET"])
        mine = [r for r in runs if (r.get("conf") or {}).get("batch_id") == b.batch_id]
        figures.delivered(d.expected, d.found_both, d.extra + max(0, len(mine) - 1))
        assert b.status == "DONE", b.errors
        assert d.complete, d
        assert len(mine) == 1, f"{len(mine)} process_study runs for one folder"
        assert mine[0]["dag_run_id"] == b.run_id == f"batch__{b.batch_id}"
        assert mine[0]["state"] == "success"


def kill_component(stack, name: str) -> list[int]:
    """SIGKILL an Airflow component and everything in its process group; return the pids that were alive."""
    proc = stack.airflow.processes[name]
    pgid = proc.pid()
    assert pgid is not None and proc.is_running(), f"{name} is not running"
    members = process_group_members(pgid)
    proc.signal(signal.SIGKILL)
    assert wait_gone(members, timeout=15), f"{name} survived SIGKILL"
    if proc.popen is not None:
        proc.popen.wait(timeout=10)
    return members


def restart_component(stack, name: str) -> None:
    """Start the component again with the same argv and environment (its log file is appended to)."""
    proc = stack.airflow.processes[name]
    proc.start()
    time.sleep(2)
    proc.check_alive()


def wait_task_running(stack, folder: str, task_id: str, timeout: float = 180) -> tuple[str, dict]:
    b = wait_batch_run(stack, folder, timeout)
    found = {}

    def running():
        t = ti(stack, b.run_id, task_id)
        if t["state"] == "running":
            found["ti"] = t
            return True
        return False

    wait_until(running, timeout, f"{task_id} running", interval=0.1)
    return b.batch_id, found["ti"]


# ---- 1. triggerer ------------------------------------------------------------------------------------------

def test_triggerer_killed_while_waiting_then_restarted(stack, sources, figures):
    client = stack.airflow.client()

    def deferred():
        for run in client.dag_runs("watch_inbox"):
            if run["state"] == "running":
                tis = client.task_instances("watch_inbox", run["dag_run_id"])
                if any(t["task_id"] == "wait_for_folders" and t["state"] == "deferred" for t in tis):
                    return True
        return False

    wait_until(deferred, 180, "watch_inbox waiting deferred", interval=1)
    killed = kill_component(stack, "triggerer")
    figures.fault("triggerer SIGKILLed while watch_inbox waits", len(killed))
    folders = ["ACC-FLT-TRIG-0001", "ACC-FLT-TRIG-0002"]
    drop(stack, sources, folders[0], "MRN-FLT-TRIG-1", 8)
    drop(stack, sources, folders[1], "MRN-FLT-TRIG-2", 6)
    time.sleep(5)
    # Nobody watches the inbox while the triggerer is down: the folders wait, unclaimed and unlost.
    inbox = Path(stack.env["RELAY_INBOX"])
    assert sorted(p.name for p in inbox.iterdir()) == folders
    restart_component(stack, "triggerer")
    wait_done(stack, folders)
    verify(stack, folders, figures)


# ---- 2. scheduler -----------------------------------------------------------------------------------------

def test_scheduler_killed_mid_run_then_restarted(stack, sources, figures):
    folders = ["ACC-FLT-SCHED-BIG1", "ACC-FLT-SCHED-0002"]
    drop(stack, sources, folders[0], "MRN-FLT-SCHED-1", BIG, size=512, n_series=2)
    drop(stack, sources, folders[1], "MRN-FLT-SCHED-2", 5)
    batch_id, _ = wait_task_running(stack, folders[0], "replace_identifiers")
    deid = Path(stack.env["RELAY_WORK_DIR"]) / "batches" / batch_id / "deid"
    wait_until(lambda: len(list(deid.glob("*.dcm"))) >= 5, 60, "partial de-identified output", interval=0.05)
    killed = kill_component(stack, "scheduler")
    figures.fault("scheduler SIGKILLed (with its executor and running tasks) during replace_identifiers", len(killed))
    # The task ran in the scheduler's LocalExecutor: it died with it, half-way (instances left PROCESSING).
    assert len(killed) >= 2
    time.sleep(2)
    restart_component(stack, "scheduler")
    wait_done(stack, folders, timeout=300)
    # The killed attempt was noticed (reset as orphaned, or failed by its missing heartbeat) and run again.
    assert ti(stack, f"batch__{batch_id}", "replace_identifiers")["try_number"] >= 2
    verify(stack, folders, figures)


# ---- 3. a task process in replace_identifiers ----------------------------------------------------------

def test_task_process_killed_in_replace_identifiers(stack, sources, figures):
    folder = "ACC-FLT-KILL-DEID-BIG"
    drop(stack, sources, folder, "MRN-FLT-KILL-DEID", BIG, size=512)
    batch_id, running = wait_task_running(stack, folder, "replace_identifiers")
    deid = Path(stack.env["RELAY_WORK_DIR"]) / "batches" / batch_id / "deid"
    # Mid-step: some of the study is de-identified, not all of it.
    wait_until(lambda: len(list(deid.glob("*.dcm"))) >= 10, 60, "partial de-identified output", interval=0.05)
    procs = airflow_task_processes(running["id"])
    assert procs["runner"], f"no task process found for task instance {running['id']}"
    partial = len(list(deid.glob("*.dcm")))
    assert partial < BIG, "replace_identifiers finished before the kill"
    sigkill(procs["runner"])
    assert wait_gone(procs["runner"])
    figures.fault("task process SIGKILLed in replace_identifiers", len(procs["runner"]))
    wait_done(stack, [folder])
    b = batch_of(stack, folder)
    assert ti(stack, b.run_id, "replace_identifiers")["try_number"] >= 2
    verify(stack, [folder], figures)


# ---- 4. a whole task in send_orthanc ---------------------------------------------------------------------

def test_task_killed_in_send_orthanc(stack, sources, figures):
    folder = "ACC-FLT-KILL-SEND-BIG"
    drop(stack, sources, folder, "MRN-FLT-KILL-SEND", BIG, size=512)
    batch_id, running = wait_task_running(stack, folder, "send_orthanc")
    env = stack.env
    auth = (env["ORTHANC_USER"], env["ORTHANC_PASSWORD"])
    study_uids = {i.deid_study_instance_uid for i in store(stack).instances(batch_id)}
    assert len(study_uids) == 1
    (study_uid,) = study_uids
    held = {"n": 0}

    def receiving():
        held["n"] = len(orthanc_study_instances(env["ORTHANC_URL"], auth, study_uid))
        return held["n"] >= 5

    wait_until(receiving, 60, "Orthanc receiving the study", interval=0.05)
    procs = airflow_task_processes(running["id"])
    victims = procs["supervisor"] + procs["runner"]
    assert procs["runner"] and procs["supervisor"], procs
    sigkill(victims)
    assert wait_gone(victims)
    at_kill = len(orthanc_study_instances(env["ORTHANC_URL"], auth, study_uid))
    assert at_kill < BIG, "send_orthanc finished before the kill"
    figures.fault("task SIGKILLed (supervisor and task process) in send_orthanc", len(victims))
    # Nobody reports this task's end: the scheduler finds it by its missing heartbeat, then it is retried.
    wait_done(stack, [folder], timeout=300)
    b = batch_of(stack, folder)
    assert ti(stack, b.run_id, "send_orthanc")["try_number"] >= 2
    verify(stack, [folder], figures)


# ---- 5. exactly once, no leak, no entry ------------------------------------------------------------------

@pytest.fixture
def planted(stack, sources, figures) -> dict:
    """The studies planted in this module so far; when there is none yet (this test runs alone, or first), one
    small study of its own, delivered, so that the checks always have identifiers to look for."""
    if not Planted.studies:
        folder = "ACC-FLT-PLAIN-0001"
        drop(stack, sources, folder, "MRN-FLT-PLAIN-1", 4)
        wait_done(stack, [folder])
        verify(stack, [folder], figures)
    return Planted.studies


def test_exactly_one_run_per_folder(stack, planted):
    client = stack.airflow.client()
    runs = client.get("/dags/process_study/dagRuns", limit=200)["dag_runs"]
    batches = {f: batch_of(stack, f) for f in planted}
    assert all(b is not None for b in batches.values())
    assert sorted(r["dag_run_id"] for r in runs) == sorted(f"batch__{b.batch_id}" for b in batches.values())
    assert not list(Path(stack.env["RELAY_INBOX"]).iterdir()), "a folder was left in the inbox"


def _xcoms(client, dag_id: str, run_id: str) -> list[tuple[str, bytes]]:
    out = []
    entries = client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/~/xcomEntries", limit=100)["xcom_entries"]
    for e in entries:
        r = client.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{e['task_id']}/xcomEntries/{e['key']}",
                           params={"map_index": e.get("map_index", -1)})
        r.raise_for_status()
        out.append((f"xcom {dag_id}/{e['task_id']}[{e.get('map_index', -1)}]/{e['key']}", r.content))
    return out


def test_no_identifier_leaked_anywhere(stack, planted, figures):
    values = sorted({v for s in planted.values() for v in s.identifiers()} | set(planted))
    run_dir = Path(stack.env["RELAY_INBOX"]).parent
    home = Path(stack.env["AIRFLOW_HOME"])
    client = stack.airflow.client()
    # Airflow task, scheduler, triggerer and dag-processor logs; every service log of the stack.
    paths = files_under(home / "logs") + files_under(run_dir, suffixes=(".log",), skip=[home / "logs"])
    assert any("process_study" in str(p) for p in paths), "no task log found: the scan would prove nothing"
    assert any(p.name == "identifier-service.log" for p in paths)
    leaks = scan_files(paths, values)
    # Run ids, confs and every XCom of both DAGs.
    texts: list[tuple[str, bytes]] = []
    n_xcom = 0
    for dag_id in ("process_study", "watch_inbox"):
        for run in client.get(f"/dags/{dag_id}/dagRuns", limit=200)["dag_runs"]:
            texts.append((f"run {dag_id}", json.dumps(run).encode()))
            x = _xcoms(client, dag_id, run["dag_run_id"])
            n_xcom += len(x)
            texts += x
    assert n_xcom >= len(planted) * len(TASKS)
    # The relay's status rows as the CLI and UI show them (errors, summaries, run ids).
    for b in store(stack).list_batches(limit=200):
        texts.append((f"batch {b.batch_id}", json.dumps(b.public(), default=str).encode() + json.dumps(b.summary).encode()))
    # Every object name and its metadata; the manifests' content.
    gcs = emulator_client(stack.env["STORAGE_EMULATOR_HOST"], "dicom-relay")
    blobs = list(gcs.list_blobs(stack.env["RELAY_GCS_BUCKET"]))
    assert len(blobs) >= sum(len(s.sop_instance_uids) for s in planted.values())
    for blob in blobs:
        texts.append((f"gcs object {blob.name}", (blob.name + json.dumps(blob.metadata or {})).encode()))
        if blob.name.endswith("manifest.json"):
            texts.append((f"gcs manifest {blob.name}", blob.download_as_bytes()))
    leaks += scan_texts(texts, values)
    # Positive control: the same scan does find the planted values where they are supposed to be (the originals).
    some_study = next(iter(planted.values()))
    assert len({leak.value_index for leak in scan_files(sorted(some_study.folder.glob("*.dcm"))[:1], values)}) >= 4
    figures.leaked(len(leaks))
    assert not leaks, [(leak.where, f"planted value #{leak.value_index}") for leak in leaks[:20]]


def test_orthanc_and_airflow_require_authentication(stack):
    env = stack.env
    assert requests.get(f"{env['ORTHANC_URL']}/instances", timeout=10).status_code == 401
    assert requests.get(f"{env['ORTHANC_URL']}/instances", auth=("relay", "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{env['AIRFLOW_URL']}/api/v2/dags", timeout=10).status_code == 401
    # A forged token is refused too (Airflow answers 403 to a bearer token it cannot verify).
    assert requests.get(f"{env['AIRFLOW_URL']}/api/v2/dags", headers={"Authorization": "Bearer not-a-token"},
                        timeout=10).status_code in (401, 403)
    bad = requests.post(f"{env['AIRFLOW_URL']}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=10)
    assert bad.status_code in (401, 403)
