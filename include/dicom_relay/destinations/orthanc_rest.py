"""Store instances in Orthanc through its REST API: ``POST /instances``, from a few threads side by side.

The transport ``rest`` of ``dicom_relay.destinations.orthanc``. Each file is the body of one ``POST
{ORTHANC_URL}/instances`` (``Content-Type: application/dicom``), exactly as stored on disk: Orthanc parses it,
stores it unchanged (transfer syntax included) and answers with JSON. A file up to ``IN_MEMORY_LIMIT`` (every
single-frame image) is read once into memory and sent from there; a larger one (a multi-frame) is streamed from
disk, so that memory stays bounded by ``workers`` x ``IN_MEMORY_LIMIT`` whatever the study. ``workers`` threads (8
by default, ``RELAY_ORTHANC_REST_WORKERS``) take the next file from one shared list, each over its own
``requests.Session`` (one kept-alive connection per thread; the environment is read once per session, see
``dicom_relay.destinations.http``). Threads, not processes: a Celery prefork worker's task process is daemonic and
may not have children.

Orthanc's answer decides each file's outcome:

- HTTP 200 with ``"Status": "Success"``: stored; with ``"AlreadyStored"``: Orthanc already held this SOP Instance
  (a resend after a crash or a retry: Orthanc keeps one copy per instance), counted as stored as well;
  any other ``Status`` (``FilteredOut`` by a Lua filter...): not stored, recorded per instance;
- HTTP 400, 413, 415 and other 4xx but the ones below: Orthanc refused this file (not DICOM, truncated, lacking
  an identifying UID...): recorded per instance with Orthanc's error name (``Bad file format``), never the
  ``Details``, which may quote the file's content; the other files still go;
- HTTP 401 / 403: the credentials are wrong or may not write: ``DestinationRejected`` (permanent, wait for a
  person); HTTP 404 / 405: ``ORTHANC_URL`` does not lead to Orthanc's REST API: ``DestinationRejected`` as well;
- no connection, a connection cut, no answer within the timeout, HTTP 429 or 5xx: ``DestinationUnavailable``
  (transient, retried), raised once the other threads have finished the file they were sending, with the
  outcomes known so far on the exception's ``report``.

The answer's ``ID`` is not compared with a hash computed here (Orthanc's instance ID is a SHA-1 of the patient,
study, series and instance UIDs, which would mean parsing every file): the step that stores also verifies, by
SOP Instance UID, that Orthanc holds the whole study (``OrthancDestination.verify``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from dicom_relay.config import ORTHANC_DEFAULT_REST_WORKERS
from dicom_relay.destinations.errors import DestinationRejected, DestinationUnavailable
from dicom_relay.destinations.http import read_environment_once
from dicom_relay.destinations.orthanc_report import InstanceOutcome, StoreReport

log = logging.getLogger(__name__)

#: Threads sending ``POST /instances`` side by side (``RELAY_ORTHANC_REST_WORKERS``; why 8: see the setting).
DEFAULT_WORKERS = ORTHANC_DEFAULT_REST_WORKERS

#: Files up to this size are read into memory and sent from there (one read, one send); larger ones are streamed.
IN_MEMORY_LIMIT = 8 * 1024 * 1024

DICOM_CONTENT_TYPE = "application/dicom"

#: ``Status`` values of Orthanc's answer under which it holds the instance.
STORED_STATUSES = frozenset({"Success", "AlreadyStored"})


def check_answer(response: requests.Response, url: str, user: str, what: str) -> None:
    """Raise for the answers that are about Orthanc or the relay's access to it, not about one request's content:
    401 / 403 (``DestinationRejected``: the credentials), 429 and 5xx (``DestinationUnavailable``)."""
    code = response.status_code
    if code in (401, 403):
        raise DestinationRejected(
            f"Orthanc REST API at {url} refused the credentials of user {user!r} "
            f"(HTTP {code}); check ORTHANC_USER / ORTHANC_PASSWORD"
        )
    if code == 429 or code >= 500:
        raise DestinationUnavailable(f"Orthanc REST API at {url} answered HTTP {code} to {what}")


class RestStore:
    """``POST /instances`` of many files from ``workers`` threads; see the module docstring for the outcomes."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 30, workers: int = DEFAULT_WORKERS):
        self.url = url.rstrip("/")
        self.user = user
        self._password = password
        # (connect, read): a dead host is noticed quickly; a large instance may take a while to be stored.
        self.timeouts = (min(float(timeout), 10.0), float(timeout))
        self.workers = max(1, int(workers))

    def __repr__(self) -> str:
        return f"RestStore(url={self.url}, workers={self.workers})"

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.auth = (self.user, self._password)
        session.headers["Content-Type"] = DICOM_CONTENT_TYPE
        read_environment_once(session, self.url)
        return session

    def store(self, paths: Sequence[Path], progress: Callable[[int], None] | None = None) -> StoreReport:
        """Send every file; return one outcome per file, in the order given.

        ``progress``, when given, is called with 1 after each answer (stored or not), from any worker thread.
        Raises ``DestinationRejected`` (credentials, wrong URL) or ``DestinationUnavailable`` (see the module
        docstring) after every worker has stopped; files already stored stay stored.
        """
        started = time.monotonic()
        paths = [Path(p) for p in paths]
        outcomes: list[InstanceOutcome | None] = [None] * len(paths)
        # next() of an itertools.count is atomic under the GIL: each index is taken by exactly one worker.
        take = itertools.count()
        stop = threading.Event()
        errors: list[Exception] = []

        def work() -> None:
            with self._session() as session:
                while not stop.is_set():
                    index = next(take)
                    if index >= len(paths):
                        return
                    try:
                        outcomes[index] = self._store_one(session, paths[index])
                    except (DestinationRejected, DestinationUnavailable) as exc:
                        errors.append(exc)
                        stop.set()
                        return
                    if progress is not None:
                        progress(1)

        workers = max(1, min(self.workers, len(paths)))
        if workers == 1:
            work()
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orthanc-rest") as pool:
                for future in [pool.submit(work) for _ in range(workers)]:
                    future.result()

        report = StoreReport(
            outcomes=[o for o in outcomes if o is not None], elapsed_seconds=time.monotonic() - started,
            transport="rest", workers=workers,
        )
        if errors:
            # A permanent error (credentials) says more than the transient ones it may have caused in other threads.
            error = next((e for e in errors if isinstance(e, DestinationRejected)), errors[0])
            if isinstance(error, DestinationUnavailable):
                stored = report.stored_count
                error = DestinationUnavailable(f"{error}; {stored} of {len(paths)} stored before")
            error.report = report  # what is known (some instances may be stored), for a caller that records it
            raise error
        return report

    def _unavailable(self, path: Path, exc: Exception) -> DestinationUnavailable:
        return DestinationUnavailable(
            f"Orthanc REST API at {self.url} is unreachable or stopped answering during POST /instances "
            f"of {path.name}: {type(exc).__name__}"
        )

    def _store_one(self, session: requests.Session, path: Path) -> InstanceOutcome:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            return InstanceOutcome(path, stored=False, reason=f"unreadable: {type(exc).__name__}")
        with fh:
            try:
                # One read; requests sends these bytes as they are. A large file is streamed (Content-Length from
                # its size) so that memory stays bounded.
                body = fh.read() if os.fstat(fh.fileno()).st_size <= IN_MEMORY_LIMIT else fh
                response = session.post(f"{self.url}/instances", data=body, timeout=self.timeouts)
            except (requests.RequestException, ConnectionError, TimeoutError) as exc:
                raise self._unavailable(path, exc) from None
            except OSError as exc:  # reading the file (before or while it was sent)
                return InstanceOutcome(path, stored=False, reason=f"unreadable: {type(exc).__name__}")
        check_answer(response, self.url, self.user, "POST /instances")
        code = response.status_code
        if code in (404, 405):
            raise DestinationRejected(
                f"{self.url} has no Orthanc REST API (HTTP {code} to POST /instances); check ORTHANC_URL"
            )
        answer = _json(response)
        if code >= 400:
            # Orthanc's error name (``OrthancError``, e.g. "Bad file format") is one of a fixed set; ``Details`` is
            # left out: it may quote the file.
            name = answer.get("OrthancError") if isinstance(answer, dict) else None
            reason = f"refused by Orthanc: {name[:80]}" if isinstance(name, str) else "refused by Orthanc"
            return InstanceOutcome(path, stored=False, http_status=code, reason=reason)
        status = answer.get("Status") if isinstance(answer, dict) else None
        if status in STORED_STATUSES and answer.get("ID"):
            return InstanceOutcome(path, stored=True, http_status=code,
                                   reason=None if status == "Success" else status)
        reason = f"not stored by Orthanc: {status}" if isinstance(status, str) else "unexpected answer from Orthanc"
        return InstanceOutcome(path, stored=False, http_status=code, reason=reason[:120])


def _json(response: requests.Response):
    try:
        return response.json()
    except ValueError:
        return None
