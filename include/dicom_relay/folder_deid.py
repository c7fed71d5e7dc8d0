"""De-identify the indexed instances of a folder with their patients' identities, verify, and fail closed.

The one implementation behind ``dicom-relay deidentify`` and the pipeline's ``get_identifiers`` and
``replace_identifiers`` steps (the pipeline adds its status writes; the command line needs no database)::

    index = index_folder(in_dir)
    run = deidentify_folder(in_dir, index.instances, identities, deidentifier, out_dir, workers=2)
    run.leaks            # every Leak found (locations only, never a value)
    run.instances        # per instance, in input order: its DeidResult and the leaks in its output

Every original is registered with its output in a :class:`~dicom_relay.deid.LeakCheck`, so that a shifted date
equal to another instance's original date is not taken for a leak, and every output is searched for the
identifying values of every original of the folder. The output of an instance in which verification finds a leak
is removed from ``out_dir`` before this returns; if de-identification itself fails, every output this call wrote
is removed. What stays in ``out_dir`` is therefore verified. The caller decides what a leak means for the rest
(the pipeline refuses the whole batch; the command line delivers the instances that verified).

:func:`file_outcomes` turns an index and a run into one outcome per input file (delivered, held_back, rejected,
duplicate, leak), the record behind ``dicom-relay deidentify --report``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .dicom_import import FolderIndex, IndexedInstance
from .errors import PermanentError

if TYPE_CHECKING:  # the engine (pydicom) is imported when a folder is de-identified, not when this is imported
    from .deid import Deidentifier, DeidResult, Leak, PatientIdentity

#: The id_source of an accession number in the identifier contract (sendit's request).
ACCESSION_SOURCE = "DCM Accession #"
#: Outcomes of an input file, in the order a summary lists them.
OUTCOMES = ("delivered", "held_back", "rejected", "duplicate", "leak")


def worker_pool(workers: int):
    """The process pool that de-identifies a folder: ``workers`` processes whose cyclic garbage collector is off.

    A worker lives for one folder and frees what it makes by reference counting; the collector's passes cost it
    CPU and find next to nothing (measured: ~1.5 cyclic objects per file on the raw path, ~40 per pixel-cleaned
    file, never pixel data)."""
    import gc
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, initializer=gc.disable)


def _daemonic() -> bool:
    """Whether this is a daemonic process, which cannot start a pool (multiprocessing: imported only here, where a
    pool is wanted; it brings socket, pickle and selectors, 0.01 CPU-s at every start)."""
    import multiprocessing

    return multiprocessing.current_process().daemon


def patient_key(patient_id: str, study_instance_uid: str) -> str:
    """The key a patient is looked up by. Instances without a Patient ID must not share one pseudonym across
    different people, so they are keyed by study."""
    return patient_id or f"NO-PATIENT-ID:{study_instance_uid}"


def instance_patient_key(instance: IndexedInstance) -> str:
    """:func:`patient_key` of an indexed instance."""
    return patient_key(instance.patient_id, instance.study_instance_uid)


@dataclass(frozen=True)
class InstanceRun:
    """One instance of a :class:`FolderRun`: the engine's result and the leaks found in its output.

    When ``leaks`` is not empty the output has been removed: ``result.path`` names a file that no longer exists.
    """

    instance: IndexedInstance
    identity: PatientIdentity
    result: DeidResult
    leaks: tuple[Leak, ...] = ()

    @property
    def delivered(self) -> bool:
        return self.result.path is not None and not self.leaks


@dataclass
class FolderRun:
    instances: list[InstanceRun] = field(default_factory=list)

    @property
    def leaks(self) -> list[Leak]:
        return [leak for run in self.instances for leak in run.leaks]


def deidentify_folder(
    in_dir: Path,
    instances: Sequence[IndexedInstance],
    identities: Mapping[str, PatientIdentity],
    deidentifier: Deidentifier,
    out_dir: Path,
    *,
    workers: int = 1,
    pool=None,
    headers=None,
) -> FolderRun:
    """De-identify ``instances`` (relative to ``in_dir``) into ``out_dir``, verify every output, fail closed.

    ``identities`` maps :func:`instance_patient_key` to the patient's identity (a missing key is a KeyError: the
    caller builds the identities from the same index). ``workers`` > 1 de-identifies in a process pool. Errors of
    the engine (:class:`~dicom_relay.deid.DeidError`) are raised after every output of this call is removed; a
    full output folder is raised as ``OSError(ENOSPC)`` (transient: a rerun may work once space is freed).
    ``pool``: a running ``ProcessPoolExecutor`` of ``workers`` processes to use instead of starting one (the
    caller's, e.g. the one that re-read the instances); it is shut down only if this call fails.
    ``headers``: the index's parsed headers (``index_folder(..., keep_headers=True).headers``), used by a run in
    this process instead of reading and parsing each file again.
    """
    from .deid import LeakCheck

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    jobs = [(in_dir / inst.relpath, identities[instance_patient_key(inst)]) for inst in instances]
    check = LeakCheck(deidentifier.options)
    out_dir.mkdir(parents=True, exist_ok=True)
    # On failure, nothing unverified may stay: remove what this call may have written (names are new SOP UIDs,
    # so a file of the folder that was there before is only removed if this call wrote over it).
    remove_outputs = lambda: _remove_outputs(out_dir, instances, deidentifier)  # noqa: E731
    with _pool_run(len(jobs), workers, pool, out_dir, remove_outputs) as pool:
        kept = [headers.get(inst.relpath) for inst in instances] if headers else None
        results = deidentifier.deidentify_files(jobs, out_dir, workers=workers, check=check, pool=pool, headers=kept)
        outputs = [r.path for r in results if r.path is not None]
        leaks = check.find_leaks(outputs, workers=workers, pool=pool)
    return _fail_closed(instances, [identity for _, identity in jobs], results, leaks)


@contextlib.contextmanager
def _pool_run(jobs: int, workers: int, pool, out_dir: Path, remove_outputs: Callable[[], None]):
    """The pool a run of ``jobs`` instances uses (the caller's ``pool``, one started here for ``workers`` > 1 and
    more jobs than workers, or None: in this process), and what happens when the run fails: the pool's other
    jobs stop first (a job still running would write an output after the removal), ``remove_outputs()`` removes
    what the run wrote, and a full output folder is raised as ``OSError(ENOSPC)``. A pool started here is shut
    down at the end; the caller's only on failure. One pool serves both stages: its processes de-identify,
    then search the outputs (started once)."""
    own_pool = None
    try:
        if pool is None and workers > 1 and jobs > workers and not _daemonic():
            pool = own_pool = worker_pool(workers)
        yield pool
    except BaseException as exc:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        full = _out_of_space(exc, out_dir)  # asked before the removal below frees the space again
        remove_outputs()
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise
    finally:
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)


def _fail_closed(instances, identities, results, leaks) -> FolderRun:
    """The run of verified instances: the output of each instance in which a leak was found is removed."""
    by_output: dict[str, list[Leak]] = {}
    for leak in leaks:
        by_output.setdefault(leak.file, []).append(leak)
    run = FolderRun()
    for inst, identity, result in zip(instances, identities, results):
        found = tuple(by_output.get(result.path.name, ())) if result.path is not None else ()
        if found:
            result.path.unlink(missing_ok=True)
        run.instances.append(InstanceRun(inst, identity, result, found))
    return run


def _read_for_deid(in_dir: str, identities: Mapping[str, PatientIdentity], src: Path):
    """``read`` of :meth:`Deidentifier.read_and_deidentify_files` for :func:`reread_and_deidentify`: the instance
    as import read it (:func:`~dicom_relay.dicom_import.read_instance`, the same checks), its identity, and its
    parsed header (raw path) for the engine."""
    from .dicom_import import KeptHeaders, read_instance

    relpath = os.path.relpath(src, in_dir)
    kept = KeptHeaders()
    found = read_instance(Path(src), relpath, kept)
    if not isinstance(found, IndexedInstance):
        return found, None, None
    return found, identities[instance_patient_key(found)], kept.get(relpath)


def reread_and_deidentify(in_dir: Path, relpaths: Sequence[str], identities: Mapping[str, PatientIdentity],
                          deidentifier: Deidentifier, out_dir: Path, *, workers: int = 1, pool=None) -> FolderRun:
    """:func:`deidentify_folder` of instances indexed earlier by another process (the pipeline's import): each is
    read again as import read it, in the process that then de-identifies it from that reading (one parse per
    file, no pass over the batch before the pool starts). A file that no longer reads as an instance is a
    :class:`~dicom_relay.errors.PermanentError`.

    ``out_dir`` is this batch's own output folder, empty at the start: when the call fails, everything in it is
    removed (the outputs of files not yet read back cannot be named in advance).
    """
    import functools
    import shutil

    from .deid import LeakCheck

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check = LeakCheck(deidentifier.options)
    out_dir.mkdir(parents=True, exist_ok=True)
    read = functools.partial(_read_for_deid, str(in_dir), dict(identities))

    def remove_outputs() -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)

    with _pool_run(len(relpaths), workers, pool, out_dir, remove_outputs) as pool:
        done = deidentifier.read_and_deidentify_files([in_dir / rel for rel in relpaths], read, out_dir,
                                                      workers=workers, check=check, pool=pool)
        if any(result is None for _, result in done):
            raise PermanentError("an instance became unreadable after import")
        instances = [found for found, _ in done]
        results = [result for _, result in done]
        leaks = check.find_leaks([r.path for r in results if r.path is not None], workers=workers, pool=pool)
    return _fail_closed(instances, [identities[instance_patient_key(i)] for i in instances], results, leaks)


def _out_of_space(exc: BaseException, out_dir: Path) -> bool:
    """Whether ``exc`` comes from a full (or over-quota) output folder: transient, not the instance's fault.

    The engine reports every write failure as a ``DeidError`` (its message names only the exception type); the
    ``OSError`` underneath says whether the disk was full. From a worker process that cause does not travel, so
    the free space of the output folder is asked as well.
    """
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        stats = os.statvfs(out_dir)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1024 * 1024


def _remove_outputs(out_dir: Path, instances: Sequence[IndexedInstance], deidentifier: Deidentifier) -> None:
    """Remove the outputs this call may have written: ``<new SOP Instance UID>.dcm`` of each instance."""
    for inst in instances:
        try:
            os.unlink(out_dir / f"{deidentifier.remap_uid(inst.sop_instance_uid)}.dcm")
        except FileNotFoundError:
            pass


def verify_folder(
    in_dir: Path,
    instances: Sequence[IndexedInstance],
    out_dir: Path,
    options,
    identities: Mapping[str, PatientIdentity] | None = None,
    deidentifier: Deidentifier | None = None,
) -> list[Leak]:
    """Search every file below ``out_dir`` for the identifying values of ``instances`` (originals in ``in_dir``).

    With the ``deidentifier`` (its key) each output is matched to its original by its name (the new SOP Instance
    UID), and with the ``identities`` the date shifts are known: the rules per instance apply. Without them an
    output gets the strict rule, and dates are not checked (a shifted date cannot be told from an original one).
    """
    from .deid import LeakCheck

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check = LeakCheck(options)
    for inst in instances:
        identity = identities.get(instance_patient_key(inst)) if identities is not None else None
        output = None
        if deidentifier is not None:
            candidate = out_dir / f"{deidentifier.remap_uid(inst.sop_instance_uid)}.dcm"
            output = candidate if candidate.is_file() else None
        check.add(in_dir / inst.relpath, identity, output)
    return check.find_leaks(sorted(p for p in out_dir.rglob("*") if p.is_file()))


# --- the identities of a folder's patients ------------------------------------------------------------------

def _iso(dicom_date: str) -> str | None:
    d = dicom_date.strip()
    if len(d) == 8 and d.isdigit():
        return f"{d[:4]}-{d[4:6]}-{d[6:]}"
    return None


def build_entities(index: FolderIndex, id_source: str) -> list:
    """One identifier-contract entity per patient, with one item per accession number (sendit's request)."""
    from .identifiers import Entity, Item

    patients: dict[str, dict[str, Any]] = {}
    for inst in index.instances:
        entry = patients.setdefault(instance_patient_key(inst), {"birth": inst.patient_birth_date, "items": {}})
        if inst.accession_number:
            entry["items"].setdefault(inst.accession_number, inst.study_date)
    return [
        Entity(
            id=key,
            id_source=id_source,
            id_timestamp=_iso(p["birth"]),
            items=tuple(
                Item(id=acc, id_source=ACCESSION_SOURCE, id_timestamp=_iso(date)) for acc, date in sorted(p["items"].items())
            ),
        )
        for key, p in sorted(patients.items())
    ]


def pseudonym_mapping(entities: list, results: list) -> dict[str, dict[str, Any]]:
    """``{patient key: {suid, jitter, accessions}}``; fails closed when any pseudonym is missing.

    Errors name the patient by position (or pseudonym), never by the identifier that was asked for.
    """
    mapping: dict[str, dict[str, Any]] = {}
    by_id = {r.id: r for r in results}
    for n, entity in enumerate(entities, start=1):
        result = by_id.get(entity.id)
        if result is None or not result.suid:
            raise PermanentError(f"the identifier service gave no pseudonym for patient {n} of {len(entities)}")
        items = {i.id: i.suid for i in result.items}
        for m, item in enumerate(entity.items, start=1):
            if not items.get(item.id):
                raise PermanentError(
                    f"the identifier service gave no pseudonym for accession {m} of patient {result.suid}"
                )
        mapping[entity.id] = {"suid": result.suid, "jitter": int(result.jitter), "accessions": items}
    return mapping


def identities_from_mapping(mapping: dict[str, dict[str, Any]]) -> dict:
    from .deid import PatientIdentity

    return {
        key: PatientIdentity(patient_pseudonym=p["suid"], jitter_days=p["jitter"], accession_pseudonyms=p["accessions"])
        for key, p in mapping.items()
    }


# --- outcomes per input file ------------------------------------------------------------------------------

@dataclass
class FileOutcome:
    """What became of one input file. ``reason`` and ``output`` hold no PHI: a reason names attributes or
    policies, never a value; ``output`` is the new file name (the new SOP Instance UID).

    ``pixels`` is room for a record about the pixel data (e.g. a burned-in text check); it is written only when
    set.
    """

    input: str
    outcome: str
    reason: str | None = None
    output: str | None = None
    pixels: dict | None = None

    def to_json(self) -> dict:
        record = {"input": self.input, "outcome": self.outcome, "reason": self.reason, "output": self.output}
        if self.pixels is not None:
            record["pixels"] = self.pixels
        return record


def file_outcomes(index: FolderIndex, run: FolderRun) -> list[FileOutcome]:
    """One :class:`FileOutcome` per file of the folder, sorted by input path."""
    out = [
        FileOutcome(r.relpath, "duplicate" if r.duplicate else "rejected", r.reason)
        for r in index.rejected
    ]
    for i in run.instances:
        if i.leaks:
            where = sorted({leak.location for leak in i.leaks})
            out.append(FileOutcome(i.instance.relpath, "leak",
                                   f"original identifying value found in {', '.join(where)}; output removed"))
        elif i.result.path is None:
            out.append(FileOutcome(i.instance.relpath, "held_back", i.result.quarantine_reason, pixels=i.result.pixels))
        else:
            out.append(FileOutcome(i.instance.relpath, "delivered", None, i.result.path.name, i.result.pixels))
    return sorted(out, key=lambda o: o.input)


def summary(outcomes: Sequence[FileOutcome]) -> dict[str, int]:
    """Counts per outcome: ``{"delivered", "held_back", "rejected", "duplicates", "leaks"}``."""
    names = {"duplicate": "duplicates", "leak": "leaks"}
    counts = {names.get(o, o): 0 for o in OUTCOMES}
    for o in outcomes:
        counts[names.get(o.outcome, o.outcome)] += 1
    return counts
