"""Scale-out on Celery, end to end: the stack of ``make run EXECUTOR=celery`` (Redis as broker, two
``airflow celery worker`` processes under the CeleryExecutor) with real Orthanc, GCS emulator, identifier service
and PostgreSQL.

1. Four studies dropped at once: their tasks ran on both workers (each worker's own log names the task instances
   it executed), every instance is in Orthanc and in the bucket exactly once, one ``process_study`` run per folder.
2. One worker is SIGKILLed (its whole process group: Celery parent, pool children, task supervisors and task
   processes) while its ``send_orthanc`` has stored part of a study: Airflow notices the missing heartbeat, the
   retry runs on the other worker, and the study ends complete with no instance twice (the relay C-STOREs only
   what Orthanc lacks and uploads create-only).

Heartbeat timeout and retry delay are shortened (as in the fault suite) so the module takes minutes, not tens.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests

from dicom_relay.status import StatusStore
from tests.faults.helpers import delivery
from tests.support.faults import process_group_members, wait_gone
from tests.support.samples import drop_atomically, generate_ct_study
from tests.support.stack.airflow import QUICK_RECOVERY_ENV, worker_name
from tests.support.stack.local import start_stack
from tests.support.stack.process import wait_until

pytestmark = pytest.mark.e2e

WORKERS = (worker_name(1), worker_name(2))
# The line Celery workers of apache-airflow-providers-celery log for every task instance they start.
EXECUTING = re.compile(
    r"Executing workload in Celery: .*?log_path='dag_id=(?P<dag>[^/]+)/run_id=(?P<run>[^/]+)/task_id=(?P<task>[^/]+)"
    r"/attempt=(?P<attempt>\d+)\.log'"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with start_stack(tmp_path_factory.mktemp("celery-stack"), base_env=dict(QUICK_RECOVERY_ENV),
                     executor="celery") as s:
        yield s


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return tmp_path_factory.mktemp("celery-sources")


def executed(stack) -> dict[str, list[tuple[str, str, int]]]:
    """Worker name -> (run id, task id, attempt) of every process_study task instance its log says it started."""
    found = defaultdict(list)
    for name in WORKERS:
        log = stack.airflow.processes[name].log_file
        for m in EXECUTING.finditer(log.read_text(errors="replace")):
            if m["dag"] == "process_study":
                found[name].append((m["run"], m["task"], int(m["attempt"])))
    return found


def batch_of(stack, folder: str):
    return next((b for b in StatusStore(stack.env["RELAY_DB_URL"]).list_batches(limit=200) if b.folder == folder),
                None)


def wait_done(stack, folders: list[str], timeout: float) -> None:
    client = stack.airflow.client()

    def finished():
        batches = [batch_of(stack, f) for f in folders]
        if not all(b is not None and b.status == "DONE" for b in batches):
            return False
        return all(client.get(f"/dags/process_study/dagRuns/{b.run_id}")["state"] == "success" for b in batches)

    wait_until(finished, timeout, f"{len(folders)} studies DONE", interval=1)


def check_delivered_once(stack, folder: str, study) -> None:
    env = stack.env
    b = batch_of(stack, folder)
    d = delivery(env["RELAY_DB_URL"], b.batch_id, study, env["ORTHANC_URL"],
                 (env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]), env["STORAGE_EMULATOR_HOST"],
                 env["RELAY_GCS_BUCKET"])
    assert d.found_both == d.expected == len(study.sop_instance_uids), d
    assert d.extra == 0, d
    runs = [r for r in stack.airflow.client().dag_runs("process_study")
            if (r.get("conf") or {}).get("batch_id") == b.batch_id]
    assert [r["dag_run_id"] for r in runs] == [b.run_id], "one process_study run per folder"


def orthanc_count(stack) -> int:
    env = stack.env
    r = requests.get(f"{env['ORTHANC_URL']}/statistics", auth=(env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]),
                     timeout=5)
    return r.json()["CountInstances"]


def test_studies_run_on_both_workers_and_arrive_exactly_once(stack, sources):
    studies = {}
    for i in range(4):
        name = f"ACC-CELERY-{i:04d}"
        studies[name] = generate_ct_study(sources / name, patient_id=f"MRN-CEL-{i}", n_instances=6 + i,
                                          rows=64, columns=64)
    for name, study in studies.items():
        drop_atomically(study.folder, Path(stack.env["RELAY_INBOX"]), name, suffix=".tmp0007")
    wait_done(stack, list(studies), timeout=240)
    for name, study in studies.items():
        check_delivered_once(stack, name, study)
    run_ids = {batch_of(stack, name).run_id for name in studies}
    ran = executed(stack)
    per_worker = {w: [t for t in ran[w] if t[0] in run_ids] for w in WORKERS}
    assert all(per_worker.values()), {w: len(t) for w, t in per_worker.items()}
    # Every task instance of every run that ran (not skipped: a clean batch skips the review) was started exactly
    # once, by one worker.
    started = [t for tasks in per_worker.values() for t in tasks]
    client = stack.airflow.client()
    ran_in_airflow = sorted((rid, ti["task_id"]) for rid in run_ids
                            for ti in client.task_instances("process_study", rid) if ti["state"] != "skipped")
    assert len(started) == len(set(started))
    assert sorted((rid, task) for rid, task, _ in started) == ran_in_airflow
    assert len(ran_in_airflow) >= 6 * len(studies)  # at least the six steps of each run


def test_sigkill_of_a_worker_mid_study_loses_and_duplicates_nothing(stack, sources):
    name = "ACC-CELERY-KILL"
    study = generate_ct_study(sources / name, patient_id="MRN-CEL-KILL", n_instances=240, rows=256, columns=256)
    before = orthanc_count(stack)
    drop_atomically(study.folder, Path(stack.env["RELAY_INBOX"]), name, suffix=".tmp0008")
    # "Mid-study": send_orthanc has stored some of the study's instances in Orthanc, not all.
    wait_until(lambda: orthanc_count(stack) > before, 240, "send_orthanc storing", interval=0.05)
    run_id = batch_of(stack, name).run_id
    victim = next(w for w, tasks in executed(stack).items() if (run_id, "send_orthanc", 1) in tasks)
    proc = stack.airflow.processes[victim]
    members = process_group_members(proc.pid())
    proc.signal(signal.SIGKILL)
    stored_at_kill = orthanc_count(stack) - before
    assert wait_gone(members, timeout=15), f"{victim} survived SIGKILL"
    assert 0 < stored_at_kill < len(study.sop_instance_uids), "the kill did not hit the middle of send_orthanc"

    wait_done(stack, [name], timeout=180)
    check_delivered_once(stack, name, study)
    survivor = next(w for w in WORKERS if w != victim)
    retried = [t for t in executed(stack)[survivor] if t[0] == run_id and t[1] == "send_orthanc"]
    assert retried and min(t[2] for t in retried) >= 2, "the retry of send_orthanc ran on the surviving worker"
    ti = stack.airflow.client().get(f"/dags/process_study/dagRuns/{run_id}/taskInstances/send_orthanc")
    assert ti["state"] == "success" and ti["try_number"] >= 2
    print(f"SIGKILLed {victim} after {stored_at_kill}/{len(study.sop_instance_uids)} instances were in Orthanc; "
          f"send_orthanc succeeded on try {ti['try_number']} on {survivor}")
