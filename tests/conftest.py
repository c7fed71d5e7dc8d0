"""Shared pytest set-up: every real service the tests need is started by a fixture module in tests/fixtures/.

Two rules are enforced here rather than trusted:

- the tests under ``tests/unit``, ``tests/dags`` and ``tests/static`` are marked ``unit`` and may not use a fixture
  that starts a service (PostgreSQL, Orthanc, the GCS emulator, the identifier service): those tests belong in
  ``tests/integration``;
- under ``CI=true`` a skipped test fails the run: a missing tool or privilege must be installed or granted in the
  set-up (scripts/setup.sh), not silently passed over.
"""

import os
from pathlib import Path

import pytest

# Airflow must not load its example DAGs when a test imports it, and must not look in ~/airflow.
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.orthanc",
    "tests.fixtures.gcs",
    "tests.fixtures.identifier_service",
    "tests.fixtures.relay",
]

TESTS = Path(__file__).resolve().parent
UNIT_FOLDERS = ("unit", "dags", "static")
#: Fixtures that start (or need) a real service.
SERVICE_FIXTURES = frozenset({
    "postgres", "relay_db_url", "empty_db_url", "orthanc", "gcs_emulator", "gcs_bucket", "identifier_service",
    "make_relay_env", "relay_settings",
})


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    misplaced = []
    for item in items:
        path = Path(str(item.fspath)).resolve()
        parts = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
        if parts and parts[0] in UNIT_FOLDERS:
            item.add_marker(pytest.mark.unit)
            used = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
            if used:
                misplaced.append(f"{item.nodeid} uses {', '.join(sorted(used))}")
    if misplaced:
        raise pytest.UsageError("unit tests must need no service; move these to tests/integration:\n  "
                                + "\n  ".join(misplaced))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"
