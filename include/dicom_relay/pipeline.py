"""The work of each ``process_study`` task, and of the inbox dispatcher, without Airflow.

Every step takes a batch id and the settings of the run, writes the status tables, and returns a small summary
(counts, pseudonyms, destinations, timings) that Airflow shows as the task's XCom. Summaries never hold an
original identifier, a folder name or a file name.

A step that fails records a readable reason on the batch (``errors``, ``has_error``, status ERROR) and raises:
``TransientError`` when retrying may help (a destination is down), ``PermanentError`` when a person must look.
Every step is safe to run again: work already done and verified is not done twice.
"""

from __future__ import annotations

import datetime as dt
import functools
from concurrent.futures import ThreadPoolExecutor, as_completed
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import inbox, overrides, quarantine, retrying
from .config import ConfigError, Settings
from .dicom_import import FolderIndex, index_folder, read_instance
from .errors import EmptyBatch, PermanentError, RelayError, TransientError
from .files import make_private_dir, remove_empty_dirs, write_json_atomically
from .folder_deid import build_entities, identities_from_mapping, pseudonym_mapping, reread_and_deidentify
from .progress import Progress
from .status import Instance, StatusStore

log = logging.getLogger(__name__)

DEID = "deid"
IDENTIFIERS_FILE = "identifiers.json"
GCS_PARALLEL_UPLOADS = 8
# Below this many instances a process pool costs more than it saves.
DEID_POOL_MIN_INSTANCES = 200


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class RunOptions:
    """What one run does: the sendit switches, overridable per run (DAG params)."""

    deidentify: bool = True
    send_orthanc: bool = True
    send_gcs: bool = True
    deid: dict = field(default_factory=dict)  # DeidOptions fields, see dicom_relay.deid ("pixels" included)

    @classmethod
    def resolve(cls, settings: Settings, params: dict | None = None) -> "RunOptions":
        """The run's options: the settings, overridden by the run's params.

        A param may make de-identification stricter, never weaker, unless the deployment sets
        RELAY_ALLOW_UNSAFE_OVERRIDES=true (:mod:`dicom_relay.overrides`); a weaker one is a ConfigError naming
        each weakening, which fails the run at its first task before anything is read or sent. That includes
        the pixel policy: the deployment's is the stricter of RELAY_PIXEL_POLICY and ``pixels`` in
        RELAY_DEID_OPTIONS; a run asks through the ``pixel_policy`` param or ``pixels`` in ``deid_options``.
        """
        from .deid.errors import DeidError
        from .deid.pixels import policy as pixel_policy

        params = params or {}

        def pick(name: str, default: bool) -> bool:
            value = params.get(name)
            return default if value is None else bool(value)

        run_deid = params.get("deid_options") or {}
        if not isinstance(run_deid, dict):
            raise ConfigError("the deid_options param must be an object of de-identification options")
        run_deid = dict(run_deid)
        try:
            deployed = pixel_policy.at_least(settings.pixel_policy, settings.deid_options.get("pixels"))
            asked = [pixel_policy.check(p) for p in (run_deid.pop("pixels", None), params.get("pixel_policy"))
                     if p is not None and str(p).strip()]
        except DeidError as exc:
            raise ConfigError(str(exc)) from None
        pixels = max(asked, key=pixel_policy.strictness) if asked else deployed
        options = cls(
            deidentify=pick("deidentify", settings.deidentify),
            send_orthanc=pick("send_orthanc", settings.send_orthanc),
            send_gcs=pick("send_gcs", settings.send_gcs),
            deid={**settings.deid_options, **run_deid, "pixels": pixels},
        )
        try:
            overrides.refuse_weaker(settings.allow_unsafe_overrides, settings.deidentify,
                                    {**settings.deid_options, "pixels": deployed}, options.deidentify, options.deid)
        except overrides.UnsafeOverride as exc:
            raise ConfigError(str(exc)) from None
        return options

    def destinations(self) -> list[str]:
        return [name for name, on in (("orthanc", self.send_orthanc), ("gcs", self.send_gcs)) if on]


class BatchPaths:
    """Where a batch's files live in the work area (see docs/ARCHITECTURE.md)."""

    def __init__(self, settings: Settings, batch_id: str):
        self.root = settings.batches_dir / batch_id
        self.incoming = self.root / inbox.INCOMING
        self.deid = self.root / DEID
        self.quarantine = self.root / quarantine.QUARANTINE
        self.identifiers = self.root / IDENTIFIERS_FILE


#: The steps that check Orthanc's password (see ``step``): the first one, and the one that uses it.
SECRET_CHECK_ORTHANC = ("import", "send_orthanc")


def step(name: str) -> Callable:
    """Record failures of a step on the batch, time it, and keep its summary on the batch row."""

    def wrap(fn: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(fn)
        def run(batch_id: str, settings: Settings, options: RunOptions | None = None, *,
                params: dict | None = None, attempt: int | None = None, **kw) -> dict:
            # A placeholder database password is refused before it is sent to the server.
            settings.require_db_secret()
            store = StatusStore(settings.db_url)
            started = time.monotonic()
            batch = store.get_batch(batch_id)
            if batch is None:
                raise PermanentError(f"batch {batch_id} is not known to the status table")
            if batch.status in ("DONE", "HELD_BACK"):
                # A rerun of a finished batch: everything deliverable was delivered and verified; there is nothing
                # to redo (held-back files go on only once a review releases them, which makes the batch NEW).
                return {"batch_id": batch_id, "skipped": f"the batch is already {batch.status}"}
            try:
                try:
                    options = options or RunOptions.resolve(settings, params)
                except ConfigError as exc:
                    raise PermanentError(f"the run's options are not valid: {exc}") from None
                try:
                    # Every step refuses to start without the secrets it needs: a task that starts with an empty
                    # key would produce pseudonyms and UIDs anyone can recompute. Orthanc's password is checked by
                    # the step that uses it and by the first step (a run whose deployment lacks it fails before
                    # any work); under Airflow the other steps do not read Orthanc's Connection at all.
                    settings.require_secrets(deidentify=options.deidentify,
                                             send_orthanc=options.send_orthanc and name in SECRET_CHECK_ORTHANC)
                except ConfigError as exc:
                    raise PermanentError(f"the deployment's secrets are not set: {exc}") from None
                summary = fn(batch_id, settings, options, store, **kw)
            except RelayError as exc:
                store.add_error(batch_id, name, str(exc), transient=exc.transient, status=exc.batch_status,
                                attempt=attempt)
                log.error("batch %s: %s failed: %s", batch_id, name, exc)
                raise
            except Exception as exc:
                # Unknown failures are recorded by type only: their text may quote file content.
                store.add_error(batch_id, name, f"unexpected {type(exc).__name__}; see the task log", transient=False,
                                attempt=attempt)
                raise
            summary = {"batch_id": batch_id, **summary, "seconds": round(time.monotonic() - started, 3),
                       # When the step last succeeded: an error of this step recorded before it is resolved.
                       "finished_at": _utcnow().isoformat(timespec="seconds")}
            if attempt is not None:
                summary["attempt"] = attempt
            store.merge_summary(batch_id, name, summary)
            log.info("batch %s: %s done: %s", batch_id, name, json.dumps(summary, default=str))
            return summary

        return run

    return wrap


# -- dispatch (watch_inbox) -------------------------------------------------------------------------------------

def claim_finished_folders(settings: Settings) -> list[dict[str, Any]]:
    """Claim every finished quiet folder, record its batch, and list the runs to request.

    Returns ``[{"trigger_run_id": ..., "conf": {"batch_id": ...}}]`` for every claimed batch whose run was not yet
    requested, including ones claimed by an earlier cycle that crashed before requesting.
    """
    settings.require_db_secret()
    store = StatusStore(settings.db_url)
    # The work area holds folder names, mappings and originals: owner only.
    make_private_dir(settings.work_dir)
    make_private_dir(settings.batches_dir)
    record_refused_entries(settings, store)
    inbox.recover_claims(settings.inbox, settings.batches_dir)
    for name in inbox.finished_folders(settings.inbox, settings.stable_seconds):
        inbox.claim(settings.inbox, settings.batches_dir, name)
    runs = []
    for c in inbox.undispatched(settings.batches_dir):
        store.create_batch(c.batch_id, c.folder)
        runs.append({"trigger_run_id": inbox.run_id_for(c.batch_id), "conf": {"batch_id": c.batch_id}})
    log.info("claimed batches waiting for a run: %d", len(runs))
    return runs


def record_refused_entries(settings: Settings, store: StatusStore) -> list[str]:
    """Record each inbox entry the relay will not take once in the status table (and close the records of those
    gone); log each new one by its refusal id and kind, never its name. Returns the new refusal ids."""
    refused = inbox.refused_entries(settings.inbox)
    new = store.record_refusals([(r.name, r.kind, r.reason) for r in refused])
    for refusal_id, kind, reason in new:
        log.warning("inbox entry %s not taken (%s): %s; see dicom-relay status", refusal_id, kind, reason)
    inbox.remember_refusals(settings.batches_dir, refused)
    return [n[0] for n in new]


def mark_dispatched(settings: Settings, batch_ids: list[str]) -> int:
    for batch_id in batch_ids:
        inbox.mark_dispatched(settings.batches_dir, batch_id)
    return len(batch_ids)


# -- process_study ----------------------------------------------------------------------------------------------

def _index(paths: BatchPaths) -> FolderIndex:
    if not paths.incoming.is_dir():
        raise PermanentError("the batch has no incoming folder (already cleaned up, or never claimed)")
    return index_folder(paths.incoming)


@step("import")
def import_batch(batch_id: str, settings: Settings, options: RunOptions, store: StatusStore, run_id: str | None = None) -> dict:
    """Index the claimed folder; hold back what is not a readable instance; record the instances."""
    store.set_status(batch_id, "PROCESSING", run_id=run_id)
    paths = BatchPaths(settings, batch_id)
    index = _index(paths)
    number = quarantine.next_number(paths.quarantine)
    for rejected in index.rejected:
        label = quarantine.hold(paths.incoming, paths.quarantine, rejected.relpath, rejected.reason, number)
        number += 1
        store.add_error(batch_id, "import", f"file {label} {rejected.reason}; kept in quarantine", status=None)
        # By label only: the file's name may be PHI (``dicom-relay quarantine list --show-paths`` maps it).
        log.warning("batch %s: import held back %s: file %s", batch_id, label, rejected.reason)
    known = {i.relpath for i in store.instances(batch_id)}
    store.add_instances(
        batch_id,
        [Instance(batch_id, i.relpath, "NEW", i.sop_class_uid, i.size_bytes) for i in index.instances if i.relpath not in known],
    )
    if not index.instances and not known:
        raise EmptyBatch("the folder holds no readable DICOM instance")
    return {
        "instances": len(index.instances),
        "studies": len(index.studies),
        "series": len(index.series),
        "patients": len(index.patients),
        "modalities": sorted({i.modality for i in index.instances if i.modality}),
        "quarantined": len(index.rejected),
    }


@step("get_identifiers")
def get_identifiers(batch_id: str, settings: Settings, options: RunOptions, store: StatusStore) -> dict:
    """Ask the identifier provider for a pseudonym and a date shift per patient, and per accession number."""
    from .identifiers import provider_from_settings

    if not options.deidentify:
        return {"skipped": "deidentify is off for this run"}
    paths = BatchPaths(settings, batch_id)
    entities = build_entities(_index(paths), settings.identifier_id_source)
    provider = provider_from_settings(settings)
    mapping = pseudonym_mapping(entities, provider.lookup(batch_id, entities))
    write_json_atomically(paths.identifiers, {"provider": provider.name, "patients": mapping}, mode=0o600)
    return {
        "provider": provider.name,
        "patients": len(mapping),
        "pseudonyms": sorted(p["suid"] for p in mapping.values()),
        "accessions": sum(len(p["accessions"]) for p in mapping.values()),
    }


def _load_identities(paths: BatchPaths) -> dict:
    if not paths.identifiers.exists():
        raise PermanentError("no identifiers for this batch: run get_identifiers first")
    return identities_from_mapping(json.loads(paths.identifiers.read_text())["patients"])


@step("replace_identifiers")
def replace_identifiers(batch_id: str, settings: Settings, options: RunOptions, store: StatusStore) -> dict:
    """De-identify every instance into the batch's staging folder, then verify no original value survived."""
    from .deid import Deidentifier, DeidOptions

    paths = BatchPaths(settings, batch_id)
    if not options.deidentify:
        return _pass_through(batch_id, paths, store)
    identities = _load_identities(paths)
    deid_options = DeidOptions.from_mapping(options.deid)
    deidentifier = Deidentifier(settings.secret_key.get_secret_value(), deid_options)
    # A rerun starts the staging folder afresh: output is deterministic, and a half-written file must not be sent.
    shutil.rmtree(paths.deid, ignore_errors=True)
    paths.deid.mkdir(parents=True)
    todo = store.instances(batch_id, states=("NEW", "PROCESSING", "DONEPROCESSING", "SENT"))
    if not todo and not store.instances(batch_id):
        # import records every instance before this step runs; none at all means the status rows were lost
        # (a restored or re-created database). Reporting "0 de-identified" would end the run as if it had worked.
        raise PermanentError("the status database holds no instance of this batch: rerun the run from import")
    store.set_instance_state(batch_id, "PROCESSING", [i.relpath for i in todo])
    changes = []
    held_back = 0
    number = quarantine.next_number(paths.quarantine)
    # De-identification is CPU-bound and each file independent (UIDs and pseudonyms are keyed, so the split does
    # not change the output): large studies use every core, from the reading of the instances to the search of
    # the outputs (one pool of processes, started once).
    workers = settings.deid_workers if len(todo) >= DEID_POOL_MIN_INSTANCES else 1
    try:
        # Each instance is read again as import read it (it may have changed since), by the process that then
        # de-identifies it from that reading.
        run = reread_and_deidentify(paths.incoming, [inst.relpath for inst in todo], identities, deidentifier,
                                    paths.deid, workers=workers)
        leaks = run.leaks
        for inst, done in zip(todo, run.instances):
            result = done.result
            if result.quarantine_reason:
                label = quarantine.hold(paths.incoming, paths.quarantine, inst.relpath, result.quarantine_reason, number)
                number += 1
                held_back += 1
                store.add_error(batch_id, "replace_identifiers", f"file {label} held back: {result.quarantine_reason}", status=None)
                log.warning("batch %s: replace_identifiers held back %s: %s", batch_id, label, result.quarantine_reason)
                changes.append((inst.relpath, {"state": "ERROR", "error": f"held back ({label})", "pixels": result.pixels}))
                continue
            changes.append((inst.relpath, {
                "state": "DONEPROCESSING",
                "pixels": result.pixels,
                "patient_pseudonym": done.identity.patient_pseudonym,
                "deid_study_instance_uid": result.study_instance_uid,
                "deid_series_instance_uid": result.series_instance_uid,
                "deid_sop_instance_uid": result.sop_instance_uid,
                "deid_relpath": str(result.path.relative_to(paths.root)),
            }))
    except OSError as exc:
        # A full disk or an unwritable work area: nothing half-written may be sent; originals are untouched.
        shutil.rmtree(paths.deid, ignore_errors=True)
        store.set_instance_state(batch_id, "NEW", [i.relpath for i in todo], from_states=("PROCESSING",))
        raise TransientError(f"could not write de-identified output ({exc.strerror or type(exc).__name__})") from None
    except Exception:
        # Whatever went wrong, nothing half-written may be sent and the instances go back to NEW for a rerun.
        shutil.rmtree(paths.deid, ignore_errors=True)
        store.set_instance_state(batch_id, "NEW", [i.relpath for i in todo], from_states=("PROCESSING",))
        raise
    if leaks:
        shutil.rmtree(paths.deid, ignore_errors=True)
        store.set_instance_state(batch_id, "NEW", [i.relpath for i in todo], from_states=("PROCESSING",))
        raise PermanentError(
            f"verification found {len(leaks)} original identifying value(s) in the de-identified output; "
            f"nothing was sent. First: {leaks[0].message}"
        )
    store.update_instances(batch_id, changes)
    store.set_status(batch_id, "DONEPROCESSING")
    done = [c for _, c in changes if c["state"] == "DONEPROCESSING"]
    return {
        "deidentified": len(done),
        "held_back": held_back,
        "pixel_policy": deid_options.pixels,
        "pixels_cleaned": sum(1 for c in done if c["pixels"] is not None),
        "studies": sorted({c["deid_study_instance_uid"] for c in done}),
        "verified_no_leak": True,
    }


def _pass_through(batch_id: str, paths: BatchPaths, store: StatusStore) -> dict:
    """deidentify=off: the originals are what is sent (to Orthanc only, see send_gcs)."""
    changes = []
    for inst in store.instances(batch_id, states=("NEW", "PROCESSING", "DONEPROCESSING", "SENT")):
        indexed = read_instance(paths.incoming / inst.relpath, inst.relpath)
        changes.append((inst.relpath, {
            "state": "DONEPROCESSING",
            "deid_study_instance_uid": indexed.study_instance_uid,
            "deid_series_instance_uid": indexed.series_instance_uid,
            "deid_sop_instance_uid": indexed.sop_instance_uid,
            "deid_relpath": str(Path(inbox.INCOMING) / inst.relpath),
        }))
    store.update_instances(batch_id, changes)
    store.set_status(batch_id, "DONEPROCESSING")
    return {"deidentified": 0, "passed_through": len(changes)}


def _ready_to_send(store: StatusStore, batch_id: str) -> list[Instance]:
    return store.instances(batch_id, states=("DONEPROCESSING", "SENT"))


def _mark_sent_if_complete(store: StatusStore, batch_id: str, options: RunOptions) -> int:
    """Instances verified at every enabled destination become SENT; the batch too once none is left to send."""
    instances = store.instances(batch_id)
    sent = [
        i.relpath for i in instances
        if i.state == "DONEPROCESSING"
        and (not options.send_orthanc or i.sent_orthanc_at) and (not options.send_gcs or i.sent_gcs_at)
    ]
    store.update_instances(batch_id, [(relpath, {"state": "SENT"}) for relpath in sent])
    if all(i.state in ("SENT", "DONE", "ERROR") or i.relpath in sent for i in instances):
        store.set_status(batch_id, "SENT")
    return len(sent)


def _orthanc(settings: Settings, fn: Callable[[], Any]) -> Any:
    """An Orthanc call under the task's one retry layer (see ``dicom_relay.retrying``)."""
    return retrying.call("orthanc", settings.send_attempts, settings.send_backoff_seconds, fn)


@step("send_orthanc")
def send_orthanc(batch_id: str, settings: Settings, options: RunOptions, store: StatusStore) -> dict:
    """Store what Orthanc does not hold yet (over RELAY_ORTHANC_TRANSPORT: POST /instances or C-STORE), then
    verify through its REST API that it holds every instance."""
    from .destinations.orthanc import OrthancDestination

    if not options.send_orthanc:
        return {"skipped": "send_orthanc is off for this run"}
    paths = BatchPaths(settings, batch_id)
    orthanc = OrthancDestination.from_settings(settings)
    pending = [i for i in _ready_to_send(store, batch_id) if not i.sent_orthanc_at]
    by_study: dict[str, list[Instance]] = {}
    for inst in pending:
        by_study.setdefault(inst.deid_study_instance_uid, []).append(inst)
    stored = already = 0
    failed: list[str] = []
    # Over every study of the batch: one per answer to a store, and what Orthanc held already counts as stored.
    progress = Progress(log, "send_orthanc", len(pending), "stored")
    for study_uid, instances in sorted(by_study.items()):
        present = _orthanc(settings, lambda: orthanc.study_instances(study_uid))
        to_send = [i for i in instances if i.deid_sop_instance_uid not in present]
        already += len(instances) - len(to_send)
        progress.advance(len(instances) - len(to_send))
        if to_send:
            report = _orthanc(settings, lambda: orthanc.store([paths.root / i.deid_relpath for i in to_send],
                                                              progress=progress.advance))
            stored += report.stored_count
            failed.extend(report.failure_messages())
        present = _orthanc(settings, lambda: orthanc.study_instances(study_uid))
        now_verified = [i for i in instances if i.deid_sop_instance_uid in present]
        store.update_instances(batch_id, [(i.relpath, {"sent_orthanc_at": _utcnow()}) for i in now_verified])
        missing = len(instances) - len(now_verified)
        if missing:
            raise TransientError(
                f"Orthanc holds {len(now_verified)} of {len(instances)} instances of study {study_uid}"
                + (f"; store failures ({orthanc.transport}): {'; '.join(failed[:3])}" if failed else "")
            )
    _mark_sent_if_complete(store, batch_id, options)
    return {"destination": "orthanc", "transport": orthanc.transport, "stored": stored, "already_present": already,
            "verified": stored + already, "studies": sorted(by_study),
            "patient_pseudonyms": sorted({i.patient_pseudonym for i in pending if i.patient_pseudonym})}


@step("send_gcs")
def send_gcs(batch_id: str, settings: Settings, options: RunOptions, store: StatusStore) -> dict:
    """Upload each de-identified instance, verify its checksum, and write a manifest per study."""
    from .destinations.gcs import GcsDestination

    if not options.send_gcs:
        return {"skipped": "send_gcs is off for this run"}
    if not options.deidentify:
        raise PermanentError("refusing to send to Google Cloud Storage without de-identification (deidentify is off)")
    paths = BatchPaths(settings, batch_id)
    gcs = GcsDestination.from_settings(settings)
    studies: dict[str, list[Instance]] = {}
    pending: list[Instance] = []
    for inst in _ready_to_send(store, batch_id):
        studies.setdefault(inst.deid_study_instance_uid, []).append(inst)
        if not inst.sent_gcs_at:
            pending.append(inst)

    def deliver(inst: Instance):
        name = gcs.object_name(inst.patient_pseudonym, inst.deid_study_instance_uid, inst.deid_series_instance_uid,
                               inst.deid_sop_instance_uid)
        metadata = {"batch_id": batch_id, "patient_pseudonym": inst.patient_pseudonym or "",
                    "sop_class_uid": inst.sop_class_uid or ""}
        # google-cloud-storage retries each request itself (RELAY_GCS_RETRY_SECONDS): no second layer here.
        result = gcs.upload(paths.root / inst.deid_relpath, name, metadata)
        # GCS's own answer carries the stored MD5 (see GcsDestination.upload); read it back only when it did not.
        if not result.verified and not gcs.verify(result.object_name, result.md5_b64):
            raise TransientError(f"GCS checksum of {result.object_name} does not match the uploaded file")
        return inst, result

    uploaded = skipped = 0
    progress = Progress(log, "send_gcs", len(pending), "uploaded")
    # Uploads are network-bound: a few in flight at once. Each verified upload is recorded as it completes
    # (in small groups), so a crash part-way keeps what was already verified.
    done: list[tuple[str, dict]] = []
    with ThreadPoolExecutor(max_workers=GCS_PARALLEL_UPLOADS) as pool:
        futures = [pool.submit(deliver, inst) for inst in pending]
        try:
            for future in as_completed(futures):
                inst, result = future.result()
                skipped += int(result.skipped)
                uploaded += int(not result.skipped)
                progress.advance()
                done.append((inst.relpath, {"sent_gcs_at": _utcnow(), "gcs_object": result.object_name,
                                            "gcs_md5": result.md5_b64}))
                if len(done) >= 25:
                    store.update_instances(batch_id, done)
                    done = []
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            store.update_instances(batch_id, done)
    manifests = []
    delivered = [i for i in store.instances(batch_id) if i.gcs_object]  # one read: with this run's uploads
    for study_uid in sorted(studies):
        instances = [i for i in delivered if i.deid_study_instance_uid == study_uid]
        manifest = {
            "batch_id": batch_id,
            "patient_pseudonym": instances[0].patient_pseudonym if instances else None,
            "study_instance_uid": study_uid,
            "series": sorted({i.deid_series_instance_uid for i in instances}),
            "instances": [{"object": i.gcs_object, "md5": i.gcs_md5, "sop_class_uid": i.sop_class_uid} for i in instances],
        }
        prefix = instances[0].gcs_object.rsplit("/", 2)[0] if instances else f"{settings.gcs_prefix}/{study_uid}"
        manifest_name = f"{prefix}/manifest.json"
        gcs.write_manifest(manifest_name, manifest)
        manifests.append(manifest_name)
    _mark_sent_if_complete(store, batch_id, options)
    return {"destination": "gcs", "bucket": settings.gcs_bucket, "uploaded": uploaded, "already_present": skipped,
            "verified": uploaded + skipped, "manifests": manifests, "studies": sorted(studies),
            "patient_pseudonyms": sorted({i.patient_pseudonym for i in pending if i.patient_pseudonym})}


@step("cleanup")
def cleanup(batch_id: str, settings: Settings, options: RunOptions, store: StatusStore) -> dict:
    """Delete originals and staging, but only once every enabled destination has verified every instance."""
    paths = BatchPaths(settings, batch_id)
    _mark_sent_if_complete(store, batch_id, options)
    instances = store.instances(batch_id)
    deliverable = [i for i in instances if i.state != "ERROR"]
    held = quarantine.held(paths.quarantine)
    if not deliverable and not held:
        raise PermanentError("no instance of the batch could be delivered: every file is held back in quarantine")
    unsent = [i for i in deliverable if i.state not in ("SENT", "DONE")]
    if unsent:
        raise PermanentError(
            f"{len(unsent)} of {len(deliverable)} instances are not verified at every enabled destination "
            f"({', '.join(options.destinations()) or 'none enabled'}); every file is kept"
        )
    if not options.destinations():
        raise PermanentError("no destination is enabled for this run; every file is kept")
    removed = 0
    for inst in deliverable:
        target = paths.incoming / inst.relpath
        if target.exists():
            target.unlink()
            removed += 1
    shutil.rmtree(paths.deid, ignore_errors=True)
    # Keep whatever is left in incoming (nothing, unless a file appeared after import) rather than lose it.
    remove_empty_dirs(paths.incoming)
    paths.identifiers.unlink(missing_ok=True)
    store.set_instance_state(batch_id, "DONE", [i.relpath for i in deliverable])
    kept = quarantine.kept_files(paths.quarantine)
    # Held-back files wait for a review (release / discard / keep held): the batch is finished but not clean.
    status = "HELD_BACK" if held else "DONE"
    store.set_status(batch_id, status, finished=True)
    if held:
        log.warning("batch %s: %d instance(s) held back for review: %s", batch_id, len(held),
                    "; ".join(f"{label}: {reason}" for label, reason in held.items()))
    return {"originals_removed": removed, "quarantined_kept": kept, "held_back": len(held), "status": status,
            "destinations": options.destinations()}


#: The process_study steps, in order, by task id.
STEPS: dict[str, Callable[..., dict]] = {
    "import": import_batch,
    "get_identifiers": get_identifiers,
    "replace_identifiers": replace_identifiers,
    "send_orthanc": send_orthanc,
    "send_gcs": send_gcs,
    "cleanup": cleanup,
}
