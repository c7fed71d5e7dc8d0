"""The operator's view inside a real Airflow 3 (issue 10): review of held-back files, the batch page, logs, assets,
and a real browser (Debian's headless Chromium over the DevTools protocol).

Four small studies, each with one bad file beside two good instances, are dropped at once:
- DISCARD: a file that is not DICOM; the Op discards it through the REST API (a Viewer may not).
- RELEASE: a truncated instance; its sender re-sends it complete, the Admin releases it, a new run delivers it.
- BROWSER: a file that is not DICOM; the Op answers "keep held" in Required Actions, in Chromium.
- TIMEOUT: a file that is not DICOM; nobody answers; at the deadline (RELAY_REVIEW_TIMEOUT_SECONDS) it stays held.
The browser test runs early: its review must be answered before that deadline.
The research DAG in tests/e2e/dags is scheduled on the GCS asset and must see the pseudonymous study UIDs.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import pytest
import requests

from tests.support.samples import drop_atomically, generate_ct_study
from tests.support.stack.local import start_stack
from tests.support.stack.process import wait_until
from dicom_relay.status import StatusStore

pytestmark = pytest.mark.e2e

DAG = "process_study"
REVIEW_TIMEOUT = 120
FOLDERS = {"DISCARD": "ACC-OV-DISCARD", "RELEASE": "ACC-OV-RELEASE", "BROWSER": "ACC-OV-BROWSER",
           "TIMEOUT": "ACC-OV-TIMEOUT"}
JUNK = "scan-notes-of-MRN-OV.bin"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".run" / "browser"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with start_stack(tmp_path_factory.mktemp("stack"),
                     base_env={"RELAY_REVIEW_TIMEOUT_SECONDS": str(REVIEW_TIMEOUT)},
                     extra_dag_folders=[Path(__file__).parent / "dags"]) as s:
        yield s


@pytest.fixture(scope="module")
def batches(stack, tmp_path_factory):
    """Drop the four studies; wait until each batch is HELD_BACK and its review waits in Required Actions."""
    src = tmp_path_factory.mktemp("sources")
    inbox = Path(stack.env["RELAY_INBOX"])
    repaired = {}
    for key, folder in FOLDERS.items():
        study = generate_ct_study(src / key, patient_id=f"MRN-OV-{key}", n_instances=2, rows=32, columns=32)
        if key == "RELEASE":
            victim = sorted(study.folder.glob("*.dcm"))[0]
            repaired["bytes"], repaired["name"] = victim.read_bytes(), victim.name
            victim.write_bytes(repaired["bytes"][:-200])  # pixel data shorter than declared
        else:
            (study.folder / JUNK).write_bytes(b"not DICOM at all " * 40)
        drop_atomically(study.folder, inbox, folder)
    store = StatusStore(stack.env["RELAY_DB_URL"])
    client = stack.airflow.client()

    def found():
        return {b.folder: b for b in store.list_batches(limit=50) if b.folder in FOLDERS.values()}

    def waiting() -> bool:
        got = found()
        if len(got) != len(FOLDERS) or any(b.status != "HELD_BACK" for b in got.values()):
            return False
        return all(client.request("GET", hitl_path(b.run_id)).status_code == 200 for b in got.values())

    wait_until(waiting, 420, "four HELD_BACK batches with their review waiting", interval=2)
    by_key = {key: found()[folder] for key, folder in FOLDERS.items()}
    return {"by_key": by_key, "repaired": repaired, "store": store, "asked_at": time.time()}


def hitl_path(run_id: str) -> str:
    return f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails"


def answer(stack, user: str, run_id: str, option: str) -> requests.Response:
    return stack.airflow.client(user).request("PATCH", hitl_path(run_id), json={"chosen_options": [option]})


def task_state(client, run_id: str, task_id: str) -> str | None:
    return next((t["state"] for t in client.task_instances(DAG, run_id) if t["task_id"] == task_id), None)


def run_finished(client, dag_id: str, run_id: str) -> bool:
    r = client.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    return r.status_code == 200 and r.json()["state"] in ("success", "failed")


def held_reason(stack, batch_id: str, label: str = "q0001") -> str:
    index = Path(stack.env["RELAY_WORK_DIR"]) / "batches" / batch_id / "quarantine" / "index.json"
    return json.loads(index.read_text())[label]["reason"]


def task_log(stack, run_id: str, task_id: str) -> str:
    root = Path(stack.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.glob("attempt=*.log")))


def test_review_shows_batch_counts_and_reasons_without_patient_data(stack, batches):
    client = stack.airflow.client()
    b = batches["by_key"]["DISCARD"]
    detail = client.get(hitl_path(b.run_id))
    assert detail["options"] == ["release", "discard", "keep held"] and detail["defaults"] == ["keep held"]
    assert b.batch_id in detail["subject"] and "**1** file(s) held back, 2 instance(s) delivered" in detail["body"]
    assert f"| {held_reason(stack, b.batch_id)} | 1: q0001 |" in detail["body"]
    listed = client.get("/dags/~/dagRuns/~/hitlDetails", response_received="false")["hitl_details"]
    assert {h["task_instance"]["dag_run_id"] for h in listed} >= {x.run_id for x in batches["by_key"].values()}
    everything = json.dumps(listed) + json.dumps(client.get(f"/dags/{DAG}/dagRuns/{b.run_id}"))
    for secret in ("MRN-OV", "ACC-OV", JUNK):
        assert secret not in everything
    run = client.get(f"/dags/{DAG}/dagRuns/{b.run_id}")
    assert run["note"].startswith(f"HELD_BACK: 1 file(s) held back (1 {held_reason(stack, b.batch_id)})")
    assert run["state"] == "running"  # not green while the review waits


def test_browser_login_browse_menu_run_link_and_review_answer(stack, batches, request, tmp_path):
    from tests.support.browser import Browser

    url = stack.env["AIRFLOW_URL"]
    b = batches["by_key"]["BROWSER"]
    shots = ARTIFACTS / request.node.name
    with Browser(tmp_path / "profile") as browser:
        try:
            # No session: the page sends the window to the login form.
            browser.goto(f"{url}/relay/")
            browser.wait_for("location.pathname.startsWith('/auth/login')", 30, "the login page")
            browser.wait_for("!!document.querySelector('input[type=password]')", 30, "the login form")
            browser.type_into("input:not([type=password])", "op")
            browser.type_into("input[type=password]", stack.airflow.passwords["op"])
            browser.js("document.querySelector('button[type=submit]').click()")
            browser.wait_for("!location.pathname.startsWith('/auth/login')", 30, "signed in")
            browser.goto(f"{url}/")
            browser.wait_for("[...document.querySelectorAll('button')].some(e => e.textContent.trim() === 'Browse')",
                             60, "the Airflow navigation")
            browser.click_text("Browse", "button")
            browser.wait_for("[...document.querySelectorAll('a,[role=menuitem]')].some("
                             "e => e.textContent.trim() === 'Relay batches')", 20, "the Browse menu")
            browser.click_text("Relay batches", "a, [role=menuitem]")
            frame = "document.querySelector('iframe')?.contentDocument"
            browser.wait_for(f"!!{frame}?.querySelector('tr.batch')", 60, "the batches page in the Airflow frame")
            assert "Signed in as op." in browser.js(f"{frame}.body.innerText")
            print(f"\nscreenshot: {browser.screenshot(shots / '1-relay-batches.png')}")
            browser.js(f"{frame}.querySelector(\"a[href*='runs/{b.run_id}']\").click()")
            browser.wait_for(f"location.pathname.endsWith('/runs/{b.run_id}')", 30, "the run's grid")
            time.sleep(2)
            print(f"screenshot: {browser.screenshot(shots / '2-run-grid.png')}")
            browser.goto(f"{url}/dags/{DAG}/runs/{b.run_id}/tasks/review/required_actions")
            browser.wait_for("[...document.querySelectorAll('button')].some(e => e.textContent.trim() === 'keep held')",
                             60, "the review's options")
            print(f"screenshot: {browser.screenshot(shots / '3-required-action.png')}")
            browser.click_text("keep held", "button")
        except Exception:
            print(f"screenshot at failure: {browser.screenshot(shots / 'failure.png')}")
            raise
    client = stack.airflow.client()
    wait_until(lambda: client.get(hitl_path(b.run_id)).get("response_received"), 30, "the answer recorded")
    detail = client.get(hitl_path(b.run_id))
    assert detail["chosen_options"] == ["keep held"] and detail["responded_by_user"]["name"] == "op"
    wait_until(lambda: run_finished(client, DAG, b.run_id), 120, "the run finished", interval=1)
    assert batches["store"].get_batch(b.batch_id).status == "HELD_BACK"
    assert client.get(f"/dags/{DAG}/dagRuns/{b.run_id}")["note"] == "HELD_BACK: 1 file(s) kept held by op"


def test_viewer_cannot_answer_and_op_discard_is_recorded_with_who_and_when(stack, batches):
    client = stack.airflow.client()
    b = batches["by_key"]["DISCARD"]
    assert answer(stack, "viewer", b.run_id, "discard").status_code == 403
    assert stack.airflow.client("viewer").request("GET", hitl_path(b.run_id)).status_code == 200  # may read
    r = answer(stack, "op", b.run_id, "discard")
    assert r.status_code == 200, r.text
    wait_until(lambda: run_finished(client, DAG, b.run_id), 120, "the discard run finished", interval=1)
    store = batches["store"]
    batch = store.get_batch(b.batch_id)
    assert batch.status == "DONE"
    note = [e["message"] for e in batch.errors if e["task"] == "review"]
    assert len(note) == 1 and note[0].startswith("file q0001 discarded by op at 20"), note
    qdir = Path(stack.env["RELAY_WORK_DIR"]) / "batches" / b.batch_id / "quarantine"
    assert not (qdir / "q0001").exists()
    run = client.get(f"/dags/{DAG}/dagRuns/{b.run_id}")
    assert run["state"] == "success" and run["note"].startswith("1 held-back file(s) discarded by op at ")
    assert task_state(client, b.run_id, "start_release_run") == "skipped"


def test_admin_release_runs_the_file_through_the_pipeline_again(stack, batches, tmp_path):
    client = stack.airflow.client()
    b = batches["by_key"]["RELEASE"]
    store = batches["store"]
    qdir = Path(stack.env["RELAY_WORK_DIR"]) / "batches" / b.batch_id / "quarantine"
    held = next(qdir.glob(f"q0001/**/{batches['repaired']['name']}"))
    held.write_bytes(batches["repaired"]["bytes"])  # the sender re-sent it complete
    r = answer(stack, "admin", b.run_id, "release")
    assert r.status_code == 200, r.text
    release_run = f"release__{b.batch_id}__1"
    wait_until(lambda: run_finished(client, DAG, release_run), 240, "the release run finished", interval=2)
    assert client.get(f"/dags/{DAG}/dagRuns/{release_run}")["state"] == "success"
    batch = store.get_batch(b.batch_id)
    assert batch.status == "DONE" and batch.counts == {"DONE": 2}
    # De-identified and verified like the rest: both instances under the pseudonym, none under the MRN.
    env = stack.env
    found = requests.post(f"{env['ORTHANC_URL']}/tools/find", auth=(env["ORTHANC_USER"], env["ORTHANC_PASSWORD"]),
                          json={"Level": "Instance", "Query": {"PatientID": store.instances(b.batch_id)[0].patient_pseudonym}},
                          timeout=30).json()
    assert len(found) == 2
    assert client.xcom(DAG, release_run, "replace_identifiers")["verified_no_leak"] is True
    assert client.get(f"/dags/{DAG}/dagRuns/{b.run_id}")["note"].startswith(
        f"1 held-back file(s) released by admin; a new run delivers them ({release_run})")


def test_logs_show_progress_and_reasons_by_label_and_no_pynetdicom_lines(stack, batches):
    b = batches["by_key"]["DISCARD"]
    imported = task_log(stack, b.run_id, "import")
    assert f"import held back q0001: file {held_reason(stack, b.batch_id)}" in imported and JUNK not in imported
    sent = task_log(stack, b.run_id, "send_orthanc")
    assert "send_orthanc: 2/2 stored" in sent
    assert "Store Request" not in sent and "Association Accepted" not in sent
    assert "send_gcs: 2/2 uploaded" in task_log(stack, b.run_id, "send_gcs")


def test_a_research_dag_scheduled_on_the_gcs_asset_gets_the_pseudonymous_study_uids(stack, batches):
    client = stack.airflow.client()
    store = batches["store"]
    wanted = {x.batch_id: {i.deid_study_instance_uid for i in store.instances(x.batch_id) if i.deid_study_instance_uid}
              for x in batches["by_key"].values()}

    def seen() -> dict:
        got: dict[str, set] = {}
        for run in client.dag_runs("research_on_new_study"):
            if run["state"] != "success":
                continue
            for event in client.xcom("research_on_new_study", run["dag_run_id"], "new_studies"):
                got.setdefault(event["batch_id"], set()).update(event["study_instance_uids"])
        return got

    wait_until(lambda: set(wanted) <= set(seen()), 180, "research runs for every batch", interval=2)
    got = seen()
    for batch_id, uids in wanted.items():
        assert got[batch_id] == uids and all(u.startswith("2.25.") or u[0].isdigit() for u in uids)
    events = client.get("/assets/events", limit=100)["asset_events"]
    text = json.dumps(events)
    assert events and "MRN-OV" not in text and "ACC-OV" not in text


def test_batches_page_links_runs_marks_held_back_and_checks_roles(stack, batches):
    url = stack.env["AIRFLOW_URL"]
    b = batches["by_key"]["TIMEOUT"]
    viewer = stack.airflow.client("viewer")
    page = requests.get(f"{url}/relay/?status=HELD_BACK", headers=viewer._headers(), timeout=30)
    assert page.status_code == 200
    assert f"runs/{b.run_id}'" in page.text and f"runs/{b.run_id}/tasks/review/required_actions" in page.text
    assert f"{html.escape(held_reason(stack, b.batch_id))} (q0001)" in page.text
    assert "needs the Op or Admin role" in page.text
    assert "ACC-OV" not in page.text and JUNK not in page.text
    assert requests.post(f"{url}/relay/batches/{b.batch_id}/requeue", headers=viewer._headers(), timeout=30).status_code == 403
    op = stack.airflow.client("op")
    # The Op passes the role check; the relay refuses to requeue a HELD_BACK batch (the review decides).
    r = requests.post(f"{url}/relay/batches/{b.batch_id}/requeue", headers=op._headers(), timeout=30)
    assert r.status_code == 409 and "HELD_BACK" in r.text
    expired = requests.get(f"{url}/relay/", cookies={"_token": "expired"}, timeout=30)
    assert expired.status_code == 401 and "location.replace" in expired.text and "/auth/login" in expired.text


def test_no_answer_by_the_deadline_keeps_the_files_held(stack, batches):
    client = stack.airflow.client()
    b = batches["by_key"]["TIMEOUT"]
    wait_until(lambda: run_finished(client, DAG, b.run_id), REVIEW_TIMEOUT + 180, "the review deadline", interval=3)
    assert batches["store"].get_batch(b.batch_id).status == "HELD_BACK"
    note = client.get(f"/dags/{DAG}/dagRuns/{b.run_id}")["note"]
    assert note == "HELD_BACK: 1 file(s) kept held by nobody (no answer by the deadline)", note
    qdir = Path(stack.env["RELAY_WORK_DIR"]) / "batches" / b.batch_id / "quarantine"
    assert any((qdir / "q0001").iterdir())
