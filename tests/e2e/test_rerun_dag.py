"""The rerun_errors DAG and `dicom-relay requeue` on a real Airflow 3 stack.

Orthanc is stopped, a study is dropped, its run fails transiently (the batch goes to ERROR while Airflow keeps the
run for its retries); rerun_errors waits while that run is active. The run is then failed by hand (as a person
would in the UI, to avoid waiting out process_study's retries of 20 s, 40 s, 80 s), Orthanc comes back, and
rerun_errors starts `rerun__<batch_id>__1`, which delivers every instance once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.samples import drop_atomically, generate_ct_study
from tests.support.stack.local import start_stack
from tests.support.stack.orthanc import OrthancHandle, start_orthanc
from tests.support.stack.process import wait_until
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.e2e

FOLDER = "ACC-RERUN-0001"
PATIENT = "MRN-E2E-RERUN"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with start_stack(tmp_path_factory.mktemp("stack"),
                     base_env={"RELAY_SEND_ATTEMPTS": "1", "RELAY_SEND_BACKOFF_SECONDS": "0.1",
                               "RELAY_MAX_RERUNS": "3"}) as s:
        yield s


def finished(client, dag_id: str, run_id: str) -> bool:
    return client.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"] in ("success", "failed")


def run_rerun_errors(client, run_id: str) -> list[dict]:
    r = client.trigger("rerun_errors", run_id, {})
    assert r.status_code in (200, 201), r.text
    wait_until(lambda: finished(client, "rerun_errors", run_id), 120, f"rerun_errors {run_id}", interval=1)
    assert client.get(f"/dags/rerun_errors/dagRuns/{run_id}")["state"] == "success"
    return client.xcom("rerun_errors", run_id, "decide")


def orthanc_instances(env) -> list[str]:
    return requests.get(f"{env['ORTHANC_URL']}/instances", auth=(env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]),
                        timeout=30).json()


def test_transient_failure_is_rerun_by_the_dag_and_delivered_once(stack, tmp_path):
    client = stack.airflow.client()
    env = stack.env
    store = StatusStore(env["RELAY_DB_URL"])
    wait_until(lambda: "rerun_errors" in client.dag_ids(), 120, "rerun_errors parsed", interval=1)
    dag = client.get("/dags/rerun_errors")
    assert dag["is_paused"] is False  # a safety net that runs without anyone unpausing it
    # The first scheduled run (created when the DAG appears) must not race the test: let it finish.
    time.sleep(3)
    wait_until(lambda: all(r["state"] in ("success", "failed") for r in client.dag_runs("rerun_errors")), 120,
               "first scheduled rerun_errors run", interval=1)

    orthanc = next(s for s in stack.services if isinstance(s, OrthancHandle))
    orthanc.stop()
    study = generate_ct_study(tmp_path / "src", patient_id=PATIENT, n_instances=5, rows=32, columns=32)
    drop_atomically(study.folder, Path(env["RELAY_INBOX"]), FOLDER)

    def batch():
        return next((b for b in store.list_batches(limit=20) if b.folder == FOLDER), None)

    wait_until(lambda: batch() is not None and batch().status == "ERROR", 180, "batch in ERROR", interval=1)
    first = batch()
    assert first.run_id == f"batch__{first.batch_id}"
    assert [e["task"] for e in first.errors] == ["send_orthanc"] and first.errors[0]["transient"] is True

    # The run is still retrying: rerun_errors waits for it.
    decisions = run_rerun_errors(client, "check_while_retrying")
    assert decisions == [{"batch_id": first.batch_id, "decision": "wait",
                          "reason": f"its run {first.run_id} is still active (Airflow retries)"}]
    assert len(client.dag_runs("process_study")) == 1

    # A person gives up on the retries (or they run out) ...
    client.request("PATCH", f"/dags/process_study/dagRuns/{first.run_id}", json={"state": "failed"}).raise_for_status()
    wait_until(lambda: finished(client, "process_study", first.run_id), 60, "original run failed", interval=1)
    assert batch().status == "ERROR"
    # ... and Orthanc is back (same storage, ports and password).
    back = start_orthanc(orthanc.process.run_dir, http_port=orthanc.http_port, dicom_port=orthanc.dicom_port,
                         user=orthanc.user, password=orthanc.password, ae_title=orthanc.ae_title)
    stack.services[stack.services.index(orthanc)] = back

    decisions = run_rerun_errors(client, "check_after_recovery")
    rerun_id = f"rerun__{first.batch_id}__1"
    assert decisions == [{"batch_id": first.batch_id, "decision": "rerun",
                          "reason": "transient error in send_orthanc; rerun 1 of 3", "run_id": rerun_id}]
    wait_until(lambda: finished(client, "process_study", rerun_id), 180, "rerun", interval=1)
    assert client.get(f"/dags/process_study/dagRuns/{rerun_id}")["state"] == "success"
    done = batch()
    assert done.status == "DONE" and done.counts == {"DONE": 5}
    assert done.run_id == rerun_id and done.rerun_count == 1
    assert done.last_decision["decision"] == "rerun" and done.last_decision["run_id"] == rerun_id
    # Each instance once in Orthanc.
    assert len(orthanc_instances(env)) == 5
    assert client.xcom("process_study", rerun_id, "send_orthanc")["stored"] == 5

    # Nothing left to decide; no further run.
    assert run_rerun_errors(client, "check_when_done") == []
    assert sorted(r["dag_run_id"] for r in client.dag_runs("process_study")) == sorted([first.run_id, rerun_id])

    # No folder name or patient identifier in what Airflow stores for these runs.
    blob = json.dumps(client.dag_runs("rerun_errors")) + json.dumps(client.dag_runs("process_study"))
    for run_id in ("check_while_retrying", "check_after_recovery", "check_when_done"):
        blob += json.dumps(client.xcom("rerun_errors", run_id, "decide"))
    for secret in [FOLDER, *study.identifiers()]:
        assert secret not in blob

    # The person on call: requeue refuses a DONE batch, and with --force starts a run that sends nothing again.
    cli_env = {**os.environ, **env}
    cli = [str(Path(sys.executable).parent / "dicom-relay"), "requeue", done.batch_id]
    refused = subprocess.run(cli, env=cli_env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "DONE" in refused.stderr
    forced = subprocess.run(cli + ["--force"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0, forced.stderr
    requeue_id = forced.stdout.strip()
    assert requeue_id == f"requeue__{done.batch_id}__1"
    wait_until(lambda: finished(client, "process_study", requeue_id), 180, "requeue", interval=1)
    assert client.xcom("process_study", requeue_id, "send_orthanc")["skipped"] == "the batch is already DONE"
    assert len(orthanc_instances(env)) == 5
    assert batch().last_decision["decision"] == "requeue"
