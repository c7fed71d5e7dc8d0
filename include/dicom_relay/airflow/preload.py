"""Import the relay's heavy modules once, in the Airflow processes that fork the processes running its code.

Every Airflow 3 task runs in a process that the task supervisor forks (``os.fork`` on Linux) from a LocalExecutor
worker, itself forked from the scheduler, or from a Celery worker's pool process; every DAG file is parsed in a
process the dag-processor forks. Each such child re-parses its DAG file and imports what the relay's code needs
(pydicom, numpy, pynetdicom, google-cloud-storage, psycopg ...): about 0.9 s of CPU per task on the 2-core
reference machine, paid seven times per study. Imported once in the parent before it forks, those modules are
inherited, already initialised, by every child (copy-on-write memory: the pages are shared, not copied).

``config/airflow_local_settings.py`` (Airflow imports it first thing in every component) calls ``preload``; only
the components that fork the relay's code import anything (``FORKING_COMPONENTS``): the api-server, the
triggerer and one-off ``airflow`` commands stay as light as before. Importing a module has no effect beyond
defining it: no connection, thread or file is opened here, so nothing is shared across the fork that should not
be.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: What the DAG files and the task callables import (the steps import some of it lazily, inside the step).
MODULES = (
    "dicom_relay.airflow.tasks",
    "dicom_relay.airflow.operators",
    "dicom_relay.airflow.connections",
    "dicom_relay.pipeline",
    "dicom_relay.deid",
    "dicom_relay.folder_deid",
    "dicom_relay.identifiers",
    "dicom_relay.destinations.orthanc",
    "dicom_relay.destinations.gcs",
    "dicom_relay.operations",
    "dicom_relay.review",
    "airflow.providers.standard.operators.hitl",
    "airflow.providers.standard.operators.trigger_dagrun",
    # What parsing the DAG files imports on first use, measured by the modules a first parse adds after the above:
    # the Task SDK's ``task`` decorator and the Python operators behind it (packaging's requirement parser with
    # them, ~50 ms of regular expressions), the relay's assets (building the first Asset loads the providers' URI
    # handlers), and the DagBag the task runner parses with. Without them every task paid ~0.15 s more.
    "airflow.dag_processing.dagbag",
    "airflow.sdk.definitions.decorators",
    "airflow.providers.standard.decorators.python",
    "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.empty",
    "airflow.sdk.bases.sensor",
    "dicom_relay.airflow.assets",
)

#: ``airflow <command...>`` prefixes of the components that fork task or DAG-parsing processes.
FORKING_COMPONENTS = (("scheduler",), ("dag-processor",), ("celery", "worker"))


def forks_relay_code(argv: Sequence[str]) -> bool:
    """Whether the ``airflow`` command line ``argv`` starts a component that forks the relay's code."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    return any(tuple(words[: len(prefix)]) == prefix for prefix in FORKING_COMPONENTS)


def preload(argv: Sequence[str] | None = None) -> list[str]:
    """Import ``MODULES`` when ``argv`` (default ``sys.argv``) is a forking component; return what was imported.

    A module that fails to import is skipped with a warning: the task that needs it will import it itself and
    report the error where it belongs (in the task's log), instead of a component that refuses to start.
    """
    argv = sys.argv if argv is None else argv
    if not forks_relay_code(argv):
        return []
    started, done = time.monotonic(), []
    for name in MODULES:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("dicom_relay preload: %s not imported (%s); tasks will import it themselves",
                        name, type(exc).__name__)
    try:
        # Every task calls the Task SDK's listener manager as it starts and ends; its first call loads Airflow's
        # plugins (the relay's UI page imports FastAPI): about 0.5 s. It is cached per process, so once here.
        from airflow.sdk.listener import get_listener_manager

        get_listener_manager()
        done.append("airflow.sdk.listener (plugins)")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("dicom_relay preload: plugins not loaded (%s)", type(exc).__name__)
    log.info("dicom_relay preload: %d modules in %.2f s", len(done), time.monotonic() - started)
    return done
