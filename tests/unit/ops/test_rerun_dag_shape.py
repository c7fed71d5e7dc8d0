"""The rerun_errors DAG file: parses, has the documented shape, and does no work at parse time."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "rerun_errors.py"))
    assert bag.import_errors == {}
    return bag.dags["rerun_errors"]


def test_shape(dag):
    from datetime import timedelta

    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.schedule == timedelta(minutes=10)
    assert dag.is_paused_upon_creation is False
    assert dag.get_task("reruns").upstream_task_ids == {"decide"}
    start = dag.get_task("start_reruns")
    assert start.upstream_task_ids == {"reruns"}
    assert start.partial_kwargs.get("skip_when_already_exists") is True
    assert start.partial_kwargs.get("trigger_dag_id") == "process_study"


def test_no_heavy_top_level_work():
    code = (
        "import time, runpy, airflow.sdk, airflow.providers.standard.operators.trigger_dagrun, dicom_relay.airflow.tasks;"
        f"t = time.perf_counter(); runpy.run_path({str(REPO / 'dags' / 'rerun_errors.py')!r}); print(time.perf_counter() - t)"
    )
    env = {"RELAY_DB_URL": "postgresql://nobody@192.0.2.1:1/none", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "include")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # A connection attempt to the unroutable RELAY_DB_URL would hang for its 10 s connect timeout.
    assert float(out.stdout.strip().splitlines()[-1]) < 5.0
