"""Send de-identified instances to Orthanc, over its REST API or over DICOM, and check over REST what it holds.

Two transports (``RELAY_ORTHANC_TRANSPORT``, or the extra ``transport`` of the Airflow Connection):

- ``rest`` (the default): each file is the body of one ``POST /instances``, from a few threads side by side
  (``dicom_relay.destinations.orthanc_rest``). The relay needs Orthanc's REST API and a login anyway, to verify
  receipt (``/tools/find``), so uploading through it adds no requirement; and it costs both sides less than
  C-STORE. Per instance of a 512x512 CT study: REST uploads 1.1 ms of the client's CPU and 2.5 ms of Orthanc's
  against 3.2 and 3.5 ms for the relay's C-STORE (``make bench-e2e``); the relay itself 1.2-1.5 ms over REST
  against 2.6-3.6 ms over DICOM, sending 1.4-1.8 times as fast (``scripts/bench_send.py``; docs/MEASUREMENTS.md).
- ``dicom``: a DICOM Storage Service Class SCU (PS3.4 Annex B), for sites whose Orthanc routes or accepts by
  calling AE title, or whose REST account may not write. The instances are spread over a few associations that
  run side by side in threads (``associations``; Orthanc stores in parallel what one association would hand it
  one at a time; threads, not processes, because a Celery prefork worker's task process is daemonic and may not
  have children), each instance sent with C-STORE in the transfer syntax it is stored in (compressed pixel data
  stays compressed). The C-STORE response status decides the outcome of each instance: Success (0000) and
  Warning (Bxxx, e.g. coercion of data elements) mean Orthanc stored it; any Failure (Axxx, Cxxx, 01xx) is
  recorded per instance and is not an exception, so that the pipeline can record it.

Either way ``store`` returns the same ``StoreReport`` (``dicom_relay.destinations.orthanc_report``), and failing
to reach Orthanc at all (connection refused or cut, association rejected or aborted, no answer in time, HTTP 5xx)
raises ``DestinationUnavailable``.

Receipt is verified over the REST API (basic authentication) whatever the transport: Orthanc is asked which SOP
Instance UIDs it holds for the study, which is independent of what the C-STORE responses or the HTTP answers said.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.status import code_to_category

from dicom_relay.config import ORTHANC_DEFAULT_TRANSPORT, ORTHANC_TRANSPORTS
from dicom_relay.destinations.errors import DestinationRejected, DestinationUnavailable
from dicom_relay.destinations.orthanc_report import InstanceOutcome, StoreReport
from dicom_relay.destinations.orthanc_rest import DEFAULT_WORKERS, RestStore, check_answer

__all__ = ["OrthancDestination", "InstanceOutcome", "StoreReport", "TRANSPORTS", "DEFAULT_TRANSPORT"]

log = logging.getLogger(__name__)

# pynetdicom logs two INFO lines per C-STORE (request sent, response received): a 500-instance study would bury the
# task log in a thousand lines. Its warnings and errors (rejections, aborts, timeouts) still show; the relay logs
# its own progress every tenth of a send (dicom_relay.progress).
logging.getLogger("pynetdicom").setLevel(logging.WARNING)
# pynetdicom's "standard" event handlers (bound to every association) build an event object and an INFO/DEBUG log
# record for every PDU and DIMSE message sent and received, 34 P-DATA PDUs for one 512x512 CT slice at Orthanc's
# default maximum PDU length: about a tenth of the sender's CPU per instance (cProfile, scripts/bench_send.py),
# for log lines the level above discards anyway. Without them, aborts, rejections and timeouts are still logged
# (pynetdicom logs those directly, at WARNING and ERROR).
_config.LOG_HANDLER_LEVEL = "none"

# Send each file's data set as it is encoded on disk, read in chunks of at most the peer's maximum PDU size,
# instead of pynetdicom's default of decoding every file with pydicom and encoding it again: that round trip was
# most of the CPU of a C-STORE (a 512x512 CT slice). It needs an accepted presentation context that matches the
# file's SOP Class and Transfer Syntax exactly, which is what the relay proposes (``plan_associations``); the
# bytes Orthanc receives are the bytes the relay verified after de-identification.
_config.STORE_SEND_CHUNKED_DATASET = True

#: PS3.8 9.3.2.2: an A-ASSOCIATE-RQ carries at most 128 presentation contexts (odd IDs 1..255).
MAX_PRESENTATION_CONTEXTS = 128

#: Associations run side by side for one batch, at most; fewer for small batches (see ``split_for_associations``).
DEFAULT_ASSOCIATIONS = 4
#: Below this many instances per association, opening another costs more than it saves.
MIN_INSTANCES_PER_ASSOCIATION = 25

#: How instances travel to Orthanc (see the module docstring); REST is the default.
TRANSPORTS, DEFAULT_TRANSPORT = ORTHANC_TRANSPORTS, ORTHANC_DEFAULT_TRANSPORT

#: C-STORE status categories under which the SCP has stored the instance (PS3.4 B.2.3).
STORED_CATEGORIES = frozenset({"Success", "Warning"})


@dataclass(frozen=True)
class _Instance:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


def _read_meta(path: Path) -> _Instance:
    """SOP Class and Transfer Syntax from the File Meta Information (group 0002) only: no dataset parsing.

    Read the way ``send_c_store`` reads it again before sending (pynetdicom's ``split_dataset``), which is half
    the CPU of pydicom's ``read_file_meta_info``."""
    meta, _ = split_dataset(path)
    sop_class = meta.get("MediaStorageSOPClassUID")
    transfer_syntax = meta.get("TransferSyntaxUID")
    if not sop_class or not transfer_syntax:
        raise InvalidDicomError("file meta lacks MediaStorageSOPClassUID or TransferSyntaxUID")
    return _Instance(path, str(sop_class), str(transfer_syntax))


def plan_associations(pairs: Iterable[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Group the distinct (SOP Class, Transfer Syntax) pairs into presentation-context sets of at most 128.

    Each pair is proposed as its own presentation context with that single transfer syntax: the acceptor picks
    one transfer syntax per context, so a SOP class present in two encodings needs two contexts for both to be
    sent as stored. A batch practically always fits one association; the split only exists so that a batch with
    more than 128 distinct pairs still goes through.
    """
    distinct = sorted(set(pairs))
    return [distinct[i : i + MAX_PRESENTATION_CONTEXTS] for i in range(0, len(distinct), MAX_PRESENTATION_CONTEXTS)]


def split_for_associations(items: Sequence, associations: int) -> list[list]:
    """Deal ``items`` round-robin onto at most ``associations`` lists of at least ``MIN_INSTANCES_PER_ASSOCIATION``
    items each (one list for a small batch). Round-robin keeps the series of a study spread evenly."""
    k = max(1, min(int(associations), len(items) // MIN_INSTANCES_PER_ASSOCIATION))
    return [list(items[i::k]) for i in range(k) if items[i::k]]


def _keep_responses_for_the_sender(assoc) -> None:
    """Work around pydicom/pynetdicom#435: between two ``send_c_store`` calls the association's reactor thread can
    wake up after the sender believes it paused, take the C-STORE-RSP off the DIMSE queue and drop it as an
    "unexpected" message; the sender then waits out the DIMSE timeout and the association is aborted. Under CPU
    contention (a shared 2-core host) this happens every few hundred instances. A message that is not a request
    is handed back to the queue, where the waiting sender finds it."""
    serve = assoc._serve_request

    def serve_request(msg, context_id):
        if msg is not None and not msg.is_valid_request:
            assoc.dimse.msg_queue.put((context_id, msg))
            time.sleep(0.0005)  # let the waiting sender take it
            return
        serve(msg, context_id)

    assoc._serve_request = serve_request


class _ConnectionWatch:
    """EVT_CONN_OPEN handler: notes that TCP connected (to tell "refused" from "aborted") and sets TCP_NODELAY.

    EVT_CONN_OPEN fires once the TCP connection is up and before the A-ASSOCIATE-RQ is written. pynetdicom writes
    a C-STORE as separate P-DATA PDUs (command set, then data set); with Nagle's algorithm the second write waits
    for the ACK of the first, which the SCP delays (40 ms on Linux) because it has nothing to send until the data
    set arrives: every instance would stall for the delayed-ACK timer.
    """

    def __init__(self, tcp_nodelay: bool):
        self.tcp_nodelay = tcp_nodelay
        self.connected = False

    def __call__(self, event: evt.Event) -> None:
        self.connected = True
        assoc_socket = event.assoc.dul.socket
        if self.tcp_nodelay and assoc_socket is not None and assoc_socket.socket is not None:
            assoc_socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class OrthancDestination:
    """Orthanc as a destination: ``transport`` ``rest`` (``POST /instances``) or ``dicom`` (C-STORE) for sending,
    REST (basic auth) for checking receipt."""

    def __init__(
        self,
        host: str,
        dicom_port: int,
        ae_title: str,
        calling_ae_title: str,
        url: str,
        user: str,
        password: str,
        timeout: float = 30,
        tcp_nodelay: bool = True,
        associations: int = DEFAULT_ASSOCIATIONS,
        transport: str = DEFAULT_TRANSPORT,
        rest_workers: int = DEFAULT_WORKERS,
    ):
        if transport not in TRANSPORTS:
            raise ValueError(f"Orthanc transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.transport = transport
        self.host = host
        self.dicom_port = int(dicom_port)
        self.ae_title = ae_title
        self.calling_ae_title = calling_ae_title
        self.url = url.rstrip("/")
        self.user = user
        self._password = password
        self.timeout = float(timeout)
        # Only switched off to measure what it is worth (about 45 ms per instance on loopback); on in the relay.
        self.tcp_nodelay = tcp_nodelay
        self.associations = max(1, int(associations))
        self._rest_store = RestStore(self.url, user, password, timeout=self.timeout, workers=rest_workers)

    def __repr__(self) -> str:
        return (
            f"OrthancDestination(transport={self.transport}, dicom={self.ae_title}@{self.host}:{self.dicom_port}, "
            f"calling={self.calling_ae_title}, url={self.url})"
        )

    @classmethod
    def from_settings(cls, settings) -> "OrthancDestination":
        return cls(
            host=settings.orthanc_host,
            dicom_port=settings.orthanc_dicom_port,
            ae_title=settings.orthanc_ae_title,
            calling_ae_title=settings.calling_ae_title,
            url=settings.orthanc_url,
            user=settings.orthanc_user,
            password=settings.orthanc_password.get_secret_value(),
            transport=settings.orthanc_transport,
            rest_workers=settings.orthanc_rest_workers,
        )

    def store(self, paths: Sequence[Path], progress: Callable[[int], None] | None = None) -> StoreReport:
        """Store every file in Orthanc over the configured ``transport``; return the per-file outcome.

        ``progress``, when given, is called with 1 after each answer (stored or not), from any of the sending
        threads, e.g. ``dicom_relay.progress.Progress.advance`` (thread-safe).

        Raises ``DestinationUnavailable`` when Orthanc cannot be reached or stops answering (after the other
        threads have finished, so that every outcome known is on the exception's ``report``), and, over REST,
        ``DestinationRejected`` for wrong credentials. Files already stored stay stored; a resend is harmless:
        Orthanc keeps one copy per SOP Instance UID (over REST it answers ``AlreadyStored``).
        """
        if self.transport == "rest":
            report = self._rest_store.store(paths, progress)
            log.info("orthanc: %d stored, %d failed in %.2fs (transport rest, %d workers)",
                     report.stored_count, report.failed_count, report.elapsed_seconds, report.workers)
            return report
        return self._store_dicom(paths, progress)

    # ---- DICOM -------------------------------------------------------------------------------------------------

    def _store_dicom(self, paths: Sequence[Path], progress: Callable[[int], None] | None = None) -> StoreReport:
        """C-STORE every file over up to ``associations`` associations at once (each proposing the presentation
        contexts of ``plan_associations``); return the per-file outcome.

        ``progress``, when given, is called with 1 after each C-STORE response (stored or not), from any of
        the associations' threads, e.g. ``dicom_relay.progress.Progress.advance`` (thread-safe).

        Raises ``DestinationUnavailable`` when Orthanc cannot be reached, rejects or aborts an association, or
        stops answering (after the other associations have finished, so that every outcome known is in the
        report); files already stored stay stored (a resend is harmless: Orthanc keeps one copy per SOP
        Instance UID).
        """
        started = time.monotonic()
        report = StoreReport(transport="dicom")
        outcomes: dict[int, InstanceOutcome] = {}
        readable: list[tuple[int, _Instance]] = []
        for index, path in enumerate(map(Path, paths)):
            try:
                readable.append((index, _read_meta(path)))
            except (OSError, EOFError, InvalidDicomError, ValueError, struct.error) as exc:  # struct: a cut-off meta
                outcomes[index] = InstanceOutcome(path, stored=False, reason=f"unreadable: {type(exc).__name__}")

        for contexts in plan_associations((i.sop_class_uid, i.transfer_syntax_uid) for _, i in readable):
            wanted = set(contexts)
            group = [
                (index, inst) for index, inst in readable if (inst.sop_class_uid, inst.transfer_syntax_uid) in wanted
            ]
            parts = split_for_associations(group, self.associations)
            report.associations += len(parts)
            if len(parts) == 1:
                results = [self._store_part(contexts, parts[0], progress)]
            else:
                with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                    results = list(pool.map(self._store_part, [contexts] * len(parts), parts, [progress] * len(parts)))
            errors = []
            for part_outcomes, error in results:
                outcomes.update(part_outcomes)
                if error:
                    errors.append(error)
            if errors:
                unavailable = DestinationUnavailable("; ".join(errors))
                # Keep what is known (some instances may be stored) for a caller that wants to record it.
                report.outcomes = [outcomes[i] for i in sorted(outcomes)]
                report.elapsed_seconds = time.monotonic() - started
                unavailable.report = report
                raise unavailable

        report.outcomes = [outcomes[i] for i in sorted(outcomes)]
        report.elapsed_seconds = time.monotonic() - started
        log.info(
            "orthanc: %d stored, %d failed in %.2fs (transport dicom, %d association(s))",
            report.stored_count, report.failed_count, report.elapsed_seconds, report.associations,
        )
        return report

    def _application_entity(self, contexts: Sequence[tuple[str, str]]) -> AE:
        ae = AE(ae_title=self.calling_ae_title)
        ae.connection_timeout = min(self.timeout, 10.0)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        for sop_class, transfer_syntax in contexts:
            ae.add_requested_context(sop_class, transfer_syntax)
        return ae

    def _store_part(
        self, contexts: Sequence[tuple[str, str]], part: Sequence[tuple[int, _Instance]],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[dict[int, InstanceOutcome], str | None]:
        """One association's share: its outcomes, and why it stopped early (None: it did not)."""
        outcomes: dict[int, InstanceOutcome] = {}
        try:
            self._store_group(contexts, part, outcomes, progress)
        except DestinationUnavailable as exc:
            return outcomes, str(exc)
        return outcomes, None

    def _store_group(
        self,
        contexts: Sequence[tuple[str, str]],
        group: Sequence[tuple[int, _Instance]],
        outcomes: dict[int, InstanceOutcome],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        ae = self._application_entity(contexts)
        watch = _ConnectionWatch(self.tcp_nodelay)
        assoc = ae.associate(
            self.host, self.dicom_port, ae_title=self.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, watch)]
        )
        if not assoc.is_established:
            ae.shutdown()
            raise DestinationUnavailable(self._association_failure(assoc, watch.connected))
        _keep_responses_for_the_sender(assoc)
        try:
            for position, (index, inst) in enumerate(group):
                try:
                    status = assoc.send_c_store(inst.path)
                except ValueError as exc:
                    # pynetdicom found no accepted presentation context for this SOP class and transfer syntax
                    # (Orthanc declined it), or could not encode the data set.
                    reason = (
                        f"not accepted by Orthanc: SOP class {inst.sop_class_uid} in {inst.transfer_syntax_uid}"
                        if "presentation context" in str(exc)
                        else f"cannot be encoded for sending: {type(exc).__name__}"
                    )
                    outcomes[index] = InstanceOutcome(inst.path, stored=False, reason=reason)
                    continue
                except (OSError, EOFError, InvalidDicomError, AttributeError) as exc:
                    reason = f"unreadable: {type(exc).__name__}"
                    outcomes[index] = InstanceOutcome(inst.path, stored=False, reason=reason)
                    continue
                if "Status" not in status:
                    # No response within the DIMSE timeout or the association went away: pynetdicom has aborted.
                    stored = sum(1 for o in outcomes.values() if o.stored)
                    raise DestinationUnavailable(
                        f"Orthanc {self.ae_title}@{self.host}:{self.dicom_port} stopped answering during C-STORE "
                        f"of instance {position + 1} of {len(group)} ({inst.path.name}); {stored} stored before"
                    )
                code = int(status.Status)
                category = code_to_category(code)
                stored = category in STORED_CATEGORIES
                outcomes[index] = InstanceOutcome(
                    inst.path, stored=stored, status=code, reason=None if category == "Success" else category
                )
                if progress is not None:
                    progress(1)
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def _association_failure(self, assoc, connected: bool) -> str:
        where = f"Orthanc {self.ae_title}@{self.host}:{self.dicom_port}"
        if not connected:
            return f"{where} is unreachable: TCP connection refused or timed out"
        if assoc.is_rejected:
            return f"{where} rejected the association from {self.calling_ae_title}"
        if assoc.is_aborted:
            return f"{where} aborted the association request"
        return f"{where} did not answer the association request in time"

    # ---- REST --------------------------------------------------------------------------------------------------

    def _rest(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = requests.request(
                method, f"{self.url}{path}", auth=(self.user, self._password), timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise DestinationUnavailable(
                f"Orthanc REST API at {self.url} is unreachable: {type(exc).__name__}"
            ) from None
        check_answer(response, self.url, self.user, path)
        if response.status_code >= 400:
            raise DestinationRejected(f"Orthanc REST API at {self.url} answered HTTP {response.status_code} to {path}")
        return response

    def study_instances(self, study_instance_uid: str) -> set[str]:
        """The SOP Instance UIDs Orthanc holds for the study (``set()`` when it holds none)."""
        response = self._rest(
            "POST",
            "/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": study_instance_uid}, "Expand": True},
        )
        return {
            item["MainDicomTags"]["SOPInstanceUID"]
            for item in response.json()
            if item.get("MainDicomTags", {}).get("SOPInstanceUID")
        }

    def verify(self, study_instance_uid: str, expected_sop_uids: Iterable[str]) -> set[str]:
        """The expected SOP Instance UIDs that Orthanc does not hold (empty: everything arrived)."""
        return set(expected_sop_uids) - self.study_instances(study_instance_uid)

    def ping(self) -> bool:
        """Whether the REST API answers ``/system`` with our credentials."""
        try:
            return self._rest("GET", "/system").status_code == 200
        except (DestinationUnavailable, DestinationRejected):
            return False
