"""Shared pytest set-up: every real service the tests need is started by a fixture module in tests/fixtures/."""

import os

# Airflow must not load its example DAGs when a test imports it, and must not look in ~/airflow.
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.orthanc",
    "tests.fixtures.gcs",
    "tests.fixtures.identifier_service",
    "tests.fixtures.relay",
]
