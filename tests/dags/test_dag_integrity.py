"""Both DAGs import cleanly, have the documented shape, and do no heavy work at import time."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) >= {"watch_inbox", "process_study"}


def test_process_study_tasks_in_order(dagbag):
    dag = dagbag.dags["process_study"]
    order = ["import", "get_identifiers", "replace_identifiers", "send_orthanc", "send_gcs", "cleanup",
             "held_back", "review", "apply_review", "start_release_run"]
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.schedule is None
    assert {"batch_id", "deidentify", "send_orthanc", "send_gcs"} <= set(dag.params.keys())


def test_review_is_a_hitl_task_that_keeps_files_held_by_default(dagbag):
    from airflow.providers.standard.operators.hitl import HITLOperator

    dag = dagbag.dags["process_study"]
    ask = dag.get_task("review")
    assert isinstance(ask, HITLOperator)
    assert ask.options == ["release", "discard", "keep held"] and ask.defaults == ["keep held"]
    assert ask.response_timeout is not None and ask.response_timeout.total_seconds() > 0
    assert dag.get_task("apply_review").trigger_rule == "all_done"


def test_delivering_tasks_declare_their_assets(dagbag):
    from dicom_relay.airflow.assets import DEIDENTIFIED_STUDY_IN_GCS, DEIDENTIFIED_STUDY_IN_ORTHANC

    dag = dagbag.dags["process_study"]
    assert [a.uri for a in dag.get_task("send_gcs").outlets] == [DEIDENTIFIED_STUDY_IN_GCS.uri]
    assert [a.uri for a in dag.get_task("send_orthanc").outlets] == [DEIDENTIFIED_STUDY_IN_ORTHANC.uri]
    assert not dag.get_task("cleanup").outlets


def test_watch_inbox_shape(dagbag):
    dag = dagbag.dags["watch_inbox"]
    assert dag.max_active_runs == 1
    start = dag.get_task("start_runs")
    assert start.partial_kwargs.get("skip_when_already_exists") is True
    from dicom_relay.airflow.operators import WaitForInboxOperator

    assert isinstance(dag.get_task("wait_for_folders"), WaitForInboxOperator)


def test_param_defaults_follow_sendit_switches(tmp_path):
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"d = DagBag(dag_folder={str(REPO / 'dags' / 'process_study.py')!r}).dags['process_study'];"
        "print(d.params['send_gcs'], d.params['send_orthanc'], d.params['deidentify'])"
    )
    env = {"SEND_TO_GOOGLE": "false", "SEND_TO_ORTHANC": "true", "DEIDENTIFY_RESTFUL": "false",
           "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO / "include")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False True False", out.stderr[-2000:]


@pytest.mark.parametrize("dag_file", ["watch_inbox.py", "process_study.py"])
def test_no_heavy_top_level_work(dag_file):
    """Parsing a DAG file connects to nothing and reads no DICOM. A connection attempt to the unroutable
    RELAY_DB_URL below would hang for its 10 s connect timeout; 5 s leaves a shared 2-core machine room."""
    code = (
        "import time, runpy, airflow.sdk, airflow.providers.standard.operators.trigger_dagrun, dicom_relay.airflow.tasks;"
        f"t = time.perf_counter(); runpy.run_path({str(REPO / 'dags' / dag_file)!r}); print(time.perf_counter() - t)"
    )
    env = {"RELAY_DB_URL": "postgresql://nobody@192.0.2.1:1/none", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "include")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 5.0


def test_every_task_has_an_execution_timeout_and_process_study_retries(dagbag):
    """A hung attempt is stopped (execution_timeout) and process_study's tasks are retried by Airflow."""
    for dag_id in ("watch_inbox", "process_study", "rerun_errors"):
        for t in dagbag.dags[dag_id].tasks:
            assert t.execution_timeout is not None and t.execution_timeout.total_seconds() > 0, (dag_id, t.task_id)
    # The review steps act once on a person's answer: retrying them would ask or act twice.
    once = {"review", "apply_review", "start_release_run"}
    assert all(t.retries >= 1 for t in dagbag.dags["process_study"].tasks if t.task_id not in once)
