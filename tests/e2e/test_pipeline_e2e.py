"""End to end on a real Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor on PostgreSQL)
with real Orthanc, GCS emulator, identifier service and PostgreSQL, started the way ``make run`` starts them.

Three studies are dropped the atomic way (one a 100-instance 512x512 CT) beside a folder that stays ``.tmp``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from tests.support.samples import drop_atomically, generate_ct_study
from tests.support.stack.local import start_stack
from tests.support.stack.process import wait_until
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.e2e

TASKS = ["import", "get_identifiers", "replace_identifiers", "send_orthanc", "send_gcs", "cleanup"]
TIMINGS_FILE = Path(__file__).resolve().parents[2] / ".run" / "e2e-timings.json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with start_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="module")
def dropped(stack, tmp_path_factory):
    """Drop the studies and wait until every batch is finished; return what was planted and when."""
    src = tmp_path_factory.mktemp("sources")
    inbox = Path(stack.env["RELAY_INBOX"])
    studies = {
        "ACC-BIG-0001": generate_ct_study(src / "big", patient_id="MRN-E2E-BIG", n_instances=100, n_series=2),
        "ACC-SMALL-0002": generate_ct_study(src / "s2", patient_id="MRN-E2E-TWO", n_instances=7, rows=128, columns=128),
        "ACC.SMALL.0003": generate_ct_study(src / "s3", patient_id="MRN-E2E-TWO", n_instances=5, rows=64, columns=64,
                                            study_date="20240401"),
    }
    pending = generate_ct_study(src / "pending", patient_id="MRN-E2E-PENDING", n_instances=3, rows=32, columns=32)
    import shutil

    shutil.copytree(pending.folder, inbox / "ACC-PENDING.tmp4711")
    dropped_at = {}
    for name, study in studies.items():
        drop_atomically(study.folder, inbox, name, suffix=".tmp2343")
        dropped_at[name] = time.time()
    store = StatusStore(stack.env["RELAY_DB_URL"])

    client = stack.airflow.client()

    def all_finished() -> bool:
        batches = [b for b in store.list_batches(limit=100) if b.folder in studies]
        if len(batches) != len(studies) or not all(b.status in ("DONE", "ERROR", "EMPTY") for b in batches):
            return False
        # The batch is DONE a moment before Airflow marks its run finished: wait for both.
        states = {r["dag_run_id"]: r["state"] for r in client.dag_runs("process_study")}
        return all(states.get(f"batch__{b.batch_id}") in ("success", "failed") for b in batches)

    wait_until(all_finished, 600, "all three batches finished", interval=1)
    finished_at = time.time()
    return {"studies": studies, "pending": pending, "dropped_at": dropped_at, "finished_at": finished_at}


def batches_by_folder(stack) -> dict:
    return {b.folder: b for b in StatusStore(stack.env["RELAY_DB_URL"]).list_batches(limit=100)}


def test_every_batch_done_with_one_successful_run(stack, dropped):
    client = stack.airflow.client()
    by_folder = batches_by_folder(stack)
    runs = client.dag_runs("process_study")
    for name, study in dropped["studies"].items():
        batch = by_folder[name]
        assert batch.status == "DONE", batch.errors
        assert batch.has_error is False
        assert batch.counts == {"DONE": len(study.sop_instance_uids)}
        mine = [r for r in runs if r["conf"].get("batch_id") == batch.batch_id]
        assert len(mine) == 1, f"{len(mine)} runs for one folder"
        assert mine[0]["state"] == "success"
        assert mine[0]["dag_run_id"] == batch.run_id == f"batch__{batch.batch_id}"
        states = {ti["task_id"]: ti["state"] for ti in client.task_instances("process_study", batch.run_id)}
        # Nothing held back: the review part is skipped (no Required Action, no note).
        assert states == {**{t: "success" for t in TASKS + ["held_back"]},
                          **{t: "skipped" for t in ("review", "apply_review", "start_release_run")}}
        assert not mine[0].get("note")
    assert len(runs) == len(dropped["studies"])


def test_inbox_holds_only_the_unfinished_folder(stack, dropped):
    inbox = Path(stack.env["RELAY_INBOX"])
    assert [p.name for p in inbox.iterdir()] == ["ACC-PENDING.tmp4711"]
    assert sorted(p.name for p in (inbox / "ACC-PENDING.tmp4711").iterdir()) == [
        "IM000001.dcm", "IM000002.dcm", "IM000003.dcm"]
    assert all(b.folder != "ACC-PENDING.tmp4711" for b in batches_by_folder(stack).values())
    # Originals and staging are gone from the work area once delivery was verified.
    for batch in batches_by_folder(stack).values():
        root = Path(stack.env["RELAY_WORK_DIR"]) / "batches" / batch.batch_id
        assert not (root / "incoming").exists() and not (root / "deid").exists()


def planted(dropped) -> list[str]:
    values = []
    for study in [*dropped["studies"].values()]:
        values += study.identifiers()
    return sorted(set(values))


def test_orthanc_holds_exactly_the_deidentified_instances(stack, dropped):
    env = stack.env
    auth = (env["ORTHANC_USER"], env["ORTHANC_PASSWORD"])
    url = env["ORTHANC_URL"]
    instances = requests.get(f"{url}/instances", auth=auth, timeout=30).json()
    expected = sum(len(s.sop_instance_uids) for s in dropped["studies"].values())
    assert len(instances) == expected
    assert requests.get(f"{url}/instances", timeout=30).status_code == 401  # authentication is on
    secrets = planted(dropped)
    patients = set()
    for orthanc_id in instances:
        data = requests.get(f"{url}/instances/{orthanc_id}/file", auth=auth, timeout=30).content
        for value in secrets:
            assert value.encode() not in data, "an original identifier reached Orthanc"
        tags = requests.get(f"{url}/instances/{orthanc_id}/simplified-tags", auth=auth, timeout=30).json()
        assert tags["PatientIdentityRemoved"] == "YES"
        assert tags["SOPInstanceUID"].startswith("2.25.")
        patients.add(tags["PatientID"])
    # Two patients were dropped (one with two studies): two pseudonyms, consistently applied.
    assert len(patients) == 2


def test_bucket_holds_exactly_the_deidentified_instances(stack, dropped):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = stack.env["STORAGE_EMULATOR_HOST"]
    client = storage.Client(project="dicom-relay", credentials=AnonymousCredentials())
    blobs = list(client.list_blobs(stack.env["RELAY_GCS_BUCKET"]))
    dicom = [b for b in blobs if b.name.endswith(".dcm")]
    manifests = [b for b in blobs if b.name.endswith("manifest.json")]
    assert len(dicom) == sum(len(s.sop_instance_uids) for s in dropped["studies"].values())
    assert len(manifests) == 3
    secrets = planted(dropped) + list(dropped["studies"])  # folder names are PHI too
    for blob in blobs:
        text = blob.name + json.dumps(blob.metadata or {})
        data = blob.download_as_bytes()
        for value in secrets:
            assert value not in text, "an identifier in an object name or metadata"
            assert value.encode() not in data, "an original identifier reached the bucket"


def test_xcoms_and_run_ids_hold_no_identifier(stack, dropped):
    client = stack.airflow.client()
    secrets = planted(dropped) + list(dropped["studies"])
    for run in client.dag_runs("process_study"):
        blob = json.dumps(run)
        for task in TASKS:
            blob += json.dumps(client.xcom("process_study", run["dag_run_id"], task))
        for value in secrets:
            assert value not in blob


def test_rerun_of_done_batch_through_cli_sends_nothing_again(stack, dropped):
    batch = batches_by_folder(stack)["ACC.SMALL.0003"]
    env = stack.env
    auth = (env["ORTHANC_USER"], env["ORTHANC_PASSWORD"])
    before = len(requests.get(f"{env['ORTHANC_URL']}/instances", auth=auth, timeout=30).json())
    run_id = f"rerun__{batch.batch_id}"
    out = stack.airflow.cli("dags", "trigger", "process_study", "-r", run_id, "-c",
                            json.dumps({"batch_id": batch.batch_id, "send_gcs": False}))
    assert out.returncode == 0, out.stderr[-2000:]
    client = stack.airflow.client()

    def finished():
        return client.get(f"/dags/process_study/dagRuns/{run_id}")["state"] in ("success", "failed")

    wait_until(finished, 300, "rerun", interval=1)
    assert client.get(f"/dags/process_study/dagRuns/{run_id}")["state"] == "success"
    assert client.xcom("process_study", run_id, "send_orthanc")["skipped"] == "the batch is already DONE"
    assert len(requests.get(f"{env['ORTHANC_URL']}/instances", auth=auth, timeout=30).json()) == before


def test_report_timings_of_the_big_study(stack, dropped):
    """Not an assertion of speed: records the measured times for the closing note and the README."""
    client = stack.airflow.client()
    batch = batches_by_folder(stack)["ACC-BIG-0001"]
    run = client.get(f"/dags/process_study/dagRuns/{batch.run_id}")
    tis = client.task_instances("process_study", batch.run_id)
    from datetime import datetime

    def ts(s):
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

    report = {
        "instances": 100,
        "drop_to_done_seconds": round(batch.finished_at.timestamp() - dropped["dropped_at"]["ACC-BIG-0001"], 2),
        "run_seconds": round(ts(run["end_date"]) - ts(run["start_date"]), 2),
        "tasks": {ti["task_id"]: round(ti["duration"], 2) for ti in tis if ti["task_id"] in TASKS},
        "work_seconds": {t: client.xcom("process_study", batch.run_id, t).get("seconds") for t in TASKS},
    }
    TIMINGS_FILE.parent.mkdir(exist_ok=True)
    TIMINGS_FILE.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    assert set(report["tasks"]) == set(TASKS)


def test_relay_batches_page_requires_login_and_hides_folders(stack, dropped):
    url = stack.env["AIRFLOW_URL"]
    assert requests.get(f"{url}/relay/batches.json", timeout=30).status_code == 401
    client = stack.airflow.client()
    headers = client._headers()
    batches = requests.get(f"{url}/relay/batches.json", headers=headers, timeout=30).json()
    assert {b["status"] for b in batches if b["run_id"] and b["run_id"].startswith("batch__")} == {"DONE"}
    page = requests.get(f"{url}/relay/", headers=headers, timeout=30).text
    assert "dicom-relay batches" in page
    for name in dropped["studies"]:
        assert name not in page and name not in json.dumps(batches)


def test_no_identifier_or_secret_in_any_log(stack, dropped):
    """Every Airflow log (tasks, scheduler, triggerer, dag-processor) and every service log of the stack is free of
    the planted identifiers, the folder names, and the stack's secrets."""
    from tests.support.faults import files_under, scan_files

    run_dir = Path(stack.env["RELAY_INBOX"]).parent
    home = Path(stack.env["AIRFLOW_HOME"])
    paths = files_under(home / "logs") + files_under(run_dir, suffixes=(".log",), skip=[home / "logs"])
    names = {p.name for p in paths}
    assert any("process_study" in str(p) for p in paths) and "identifier-service.log" in names, names
    secrets = [stack.env[k] for k in ("RELAY_SECRET_KEY", "ORTHANC_PASSWORD", "RELAY_IDENTIFIER_TOKEN")]
    leaks = scan_files(paths, planted(dropped) + list(dropped["studies"]) + ["MRN-E2E-PENDING"] + secrets)
    assert leaks == [], [str(leak) for leak in leaks[:5]]


def test_every_process_of_the_stack_listens_on_loopback_only(stack):
    """Airflow's components (with every process they fork: task runners, workers) and the services: psutil lists
    the listening sockets of each process tree. Airflow's log servers would listen on every interface: they are
    not started (the api-server reads the shared log folder)."""
    from tests.support.stack.process import is_loopback, listening_addresses

    trees = {name: proc.pid() for name, proc in stack.airflow.processes.items()}
    trees.update({type(s).__name__: s.process.pid() for s in stack.services})
    found = {name: listening_addresses(pid) for name, pid in trees.items()}
    assert found["api-server"] and all(found[type(s).__name__] for s in stack.services), found
    exposed = {name: sorted(a for a in addresses if not is_loopback(a[0])) for name, addresses in found.items()}
    assert not any(exposed.values()), f"listening beyond loopback: {exposed}"
    log_ports = {int(stack.env[k]) for k in ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                                            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")}
    assert not log_ports & {port for addresses in found.values() for _, port in addresses}
