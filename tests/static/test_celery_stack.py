"""The local Celery stack (``make run EXECUTOR=celery``, tests/support/stack) and docker-compose.yaml agree: the same
executor, a Redis broker, the result backend in Airflow's metadata database, workers started as ``celery worker``,
and the Celery provider pinned in requirements.txt (which the Docker image installs)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.support.stack.airflow import CeleryConfig, celery_worker

ROOT = Path(__file__).resolve().parents[2]


def compose_env(service: str) -> dict:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    return compose["services"][service]["environment"], compose["services"][service]["command"]


def test_local_celery_settings_match_compose(tmp_path):
    local = CeleryConfig(broker_url="redis://:pw@127.0.0.1:6379/0",
                         result_backend="db+postgresql://u:p@127.0.0.1:5432/airflow").env()
    env, command = compose_env("airflow-worker")
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert key in env, f"docker-compose.yaml lacks {key}"
    assert local["AIRFLOW__CORE__EXECUTOR"] == env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert urlsplit(local["AIRFLOW__CELERY__BROKER_URL"]).scheme == urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).scheme == "redis"
    backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert urlsplit(local["AIRFLOW__CELERY__RESULT_BACKEND"]).scheme == backend.scheme == "db+postgresql"
    # (split by hand: compose's "${VAR:?message}" holds a "?" that urlsplit takes for a query)
    database = env["AIRFLOW__CELERY__RESULT_BACKEND"].rsplit("/", 1)[1]
    assert database == local["AIRFLOW__CELERY__RESULT_BACKEND"].rsplit("/", 1)[1] == "airflow", \
        "the result backend is Airflow's metadata database in both"
    worker = celery_worker(tmp_path, tmp_path, local, 1, 2)
    assert worker.argv[1:3] == command.split() == ["celery", "worker"]


def test_celery_provider_is_pinned_for_the_image():
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert "apache-airflow-providers-celery" in pins and "celery" in pins and "redis" in pins
    assert pins["celery"].startswith("5.")
