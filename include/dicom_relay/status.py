"""The relay's own status tables in PostgreSQL: one row per batch, one row per instance.

The lifecycle words are sendit's. A batch goes NEW (claimed) -> PROCESSING (imported, being de-identified) ->
DONEPROCESSING (de-identified and verified) -> SENT (every enabled destination verified) -> DONE (originals
removed); EMPTY when the folder held no DICOM instance; ERROR with a reason a person can read. An instance goes
NEW -> PROCESSING -> DONEPROCESSING -> SENT -> DONE, or ERROR (unreadable, held back, rejected by a destination).

What these tables hold: the inbox folder name (internal: folder names may be PHI, so ``dicom-relay status``
does not show it), file paths relative to the batch, and de-identified UIDs and pseudonyms. No original patient
identifier is stored here; the pseudonym mapping lives in the batch's work area and in the identifier service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .errors import PermanentError

# HELD_BACK: every instance that could go was delivered and verified, but some are held back in quarantine
# (unreadable, or not safe to send) until a person releases or discards them: finished, but not clean.
_BATCH_STATES_V1 = ("NEW", "PROCESSING", "DONEPROCESSING", "SENT", "DONE", "ERROR", "EMPTY")
BATCH_STATES = _BATCH_STATES_V1 + ("HELD_BACK",)
INSTANCE_STATES = ("NEW", "PROCESSING", "DONEPROCESSING", "SENT", "DONE", "ERROR")

# Each migration runs once, in order, under an advisory lock so that concurrent starts cannot race on it.
# ``StatusStore.migrate`` runs once at start (``dicom-relay migrate``: the compose init service, ``make run``),
# not on every task or page request.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE relay_batch (
        batch_id      text PRIMARY KEY,
        folder        text NOT NULL,
        status        text NOT NULL DEFAULT 'NEW' CHECK (status IN {_BATCH_STATES_V1!r}),
        has_error     boolean NOT NULL DEFAULT false,
        errors        jsonb NOT NULL DEFAULT '[]'::jsonb,
        run_id        text,
        summary       jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        rerun_count   integer NOT NULL DEFAULT 0,
        created_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now(),
        finished_at   timestamptz
    );
    CREATE INDEX relay_batch_status ON relay_batch (status);
    CREATE TABLE relay_instance (
        batch_id                 text NOT NULL REFERENCES relay_batch (batch_id) ON DELETE CASCADE,
        relpath                  text NOT NULL,
        state                    text NOT NULL DEFAULT 'NEW' CHECK (state IN {INSTANCE_STATES!r}),
        sop_class_uid            text,
        size_bytes               bigint,
        patient_pseudonym        text,
        deid_study_instance_uid  text,
        deid_series_instance_uid text,
        deid_sop_instance_uid    text,
        deid_relpath             text,
        gcs_object               text,
        gcs_md5                  text,
        sent_orthanc_at          timestamptz,
        sent_gcs_at              timestamptz,
        error                    text,
        updated_at               timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (batch_id, relpath)
    );
    CREATE INDEX relay_instance_state ON relay_instance (batch_id, state);
    """,
    # 2: operations (dicom_relay.operations). ``last_decision`` is the latest rerun / requeue / leave decision
    # ({at, decision, reason, run_id}); ``requeue_count`` numbers the runs a person requested; ``run_started_at``
    # is when the batch last went to PROCESSING (the start of its latest run), kept by a trigger so that the
    # pipeline needs no change: errors recorded since then are the errors of the latest run.
    """
    ALTER TABLE relay_batch
        ADD COLUMN last_decision  jsonb,
        ADD COLUMN requeue_count  integer NOT NULL DEFAULT 0,
        ADD COLUMN run_started_at timestamptz;
    CREATE FUNCTION relay_batch_run_started() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.status = 'PROCESSING' AND OLD.status IS DISTINCT FROM 'PROCESSING' THEN
            NEW.run_started_at := clock_timestamp();
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER relay_batch_run_started BEFORE UPDATE OF status ON relay_batch
        FOR EACH ROW EXECUTE FUNCTION relay_batch_run_started();
    """,
    # 3: the pixel stage's record of an instance whose pixels were read (dicom_relay.deid.pixels.stage.PixelRecord:
    # what was blanked, rule ids, the OCR engine and version, the verdict). IF NOT EXISTS: harmless if run twice.
    """
    ALTER TABLE relay_instance ADD COLUMN IF NOT EXISTS pixels jsonb;
    """,
    # 4: HELD_BACK, the final status of a batch delivered except for instances held back for review.
    f"""
    ALTER TABLE relay_batch DROP CONSTRAINT relay_batch_status_check;
    ALTER TABLE relay_batch ADD CONSTRAINT relay_batch_status_check CHECK (status IN {BATCH_STATES!r});
    """,
    # 5: inbox entries the relay will not take (dicom_relay.inbox.refused_entries): one open row per entry and
    # kind, recorded once; ``resolved_at`` is set when the entry is gone or became claimable. ``entry`` is the
    # entry's name, internal like relay_batch.folder (names may be PHI): shown by ``refusal_id`` only.
    """
    CREATE TABLE IF NOT EXISTS relay_inbox_refusal (
        refusal_id  text PRIMARY KEY,
        entry       text NOT NULL,
        kind        text NOT NULL,
        reason      text NOT NULL,
        first_seen  timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz
    );
    CREATE UNIQUE INDEX IF NOT EXISTS relay_inbox_refusal_open ON relay_inbox_refusal (entry, kind)
        WHERE resolved_at IS NULL;
    """,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Batch:
    batch_id: str
    folder: str
    status: str
    has_error: bool
    errors: list[dict]
    run_id: str | None
    summary: dict
    rerun_count: int
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    counts: dict[str, int] = field(default_factory=dict)
    # Added by migration 2 (see dicom_relay.operations).
    last_decision: dict | None = None
    requeue_count: int = 0
    run_started_at: dt.datetime | None = None

    def public(self) -> dict[str, Any]:
        """The batch as ``dicom-relay status --json`` shows it: no folder name, no identifier."""
        return {
            "batch_id": self.batch_id,
            "status": self.status,
            "has_error": self.has_error,
            "errors": self.errors,
            "run_id": self.run_id,
            "instances": self.counts,
            "rerun_count": self.rerun_count,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "last_decision": self.last_decision,
            "requeue_count": self.requeue_count,
        }


@dataclass
class Instance:
    """One row of ``relay_instance``: a file of a batch, from import to delivery."""

    batch_id: str
    #: The file's path inside the batch's incoming folder (PHI: shown only to the operator, never logged).
    relpath: str
    #: NEW -> PROCESSING -> DONEPROCESSING -> SENT -> DONE, or ERROR (held back).
    state: str
    sop_class_uid: str | None = None
    size_bytes: int | None = None
    #: After replace_identifiers: the patient's pseudonym and the instance's new (de-identified) UIDs and file.
    patient_pseudonym: str | None = None
    deid_study_instance_uid: str | None = None
    deid_series_instance_uid: str | None = None
    deid_sop_instance_uid: str | None = None
    deid_relpath: str | None = None
    #: After send_gcs: the object and the MD5 GCS reported for it (its verification).
    gcs_object: str | None = None
    gcs_md5: str | None = None
    #: When each destination verified the instance; cleanup deletes the original only when every enabled one has.
    sent_orthanc_at: dt.datetime | None = None
    sent_gcs_at: dt.datetime | None = None
    error: str | None = None
    updated_at: dt.datetime | None = None
    # Added by migration 3: the pixel record (None when the instance's pixels were not read).
    pixels: dict | None = None


INSTANCE_FIELDS = tuple(Instance.__dataclass_fields__)


@dataclass
class Refusal:
    """An inbox entry the relay will not take (migration 3). ``entry`` is its name: internal, never shown."""

    refusal_id: str
    entry: str
    kind: str
    reason: str
    first_seen: dt.datetime
    resolved_at: dt.datetime | None = None

    def public(self) -> dict[str, Any]:
        """As ``dicom-relay status`` shows it: no name."""
        return {"refusal_id": self.refusal_id, "kind": self.kind, "reason": self.reason,
                "first_seen": self.first_seen.isoformat(),
                "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None}


class StatusTablesMissing(PermanentError):
    """The status database has no relay tables yet: the start-up migration has not run against it."""


class StatusStore:
    """Reads and writes the status tables. Each call uses its own short connection (tasks are short-lived)."""

    def __init__(self, db_url: str):
        self.db_url = db_url

    @contextlib.contextmanager
    def _connect(self) -> Iterator[psycopg.Connection]:
        try:
            with psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row, connect_timeout=10) as conn:
                yield conn
        except psycopg.errors.UndefinedTable:
            raise StatusTablesMissing(
                "the relay's status tables do not exist in the RELAY_DB_URL database: run `dicom-relay migrate` "
                "(the compose init service and make run do, once at start)"
            ) from None

    # -- schema -------------------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Bring the tables to the newest version; safe to call from many processes at once. Returns it."""
        with self._connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('dicom_relay.migrate'))")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS relay_schema_version ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM relay_schema_version").fetchone()
            current = row["v"]
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version > current:
                    conn.execute(sql)
                    conn.execute("INSERT INTO relay_schema_version (version) VALUES (%s)", (version,))
            return len(MIGRATIONS)

    # -- inbox entries not taken (migration 3) --------------------------------------------------------------
    def record_refusals(self, refused: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Make the open refusals exactly ``refused`` ((name, kind, reason) of every entry refused now): add the
        new ones, resolve the ones no longer refused. Returns (refusal_id, kind, reason) of each added one, so
        that each is announced once however often the inbox is scanned."""
        import secrets

        added = []
        with self._connect() as conn, conn.transaction():
            for name, kind, reason in refused:
                refusal_id = f"{_now():%Y%m%dT%H%M%S}-r{secrets.token_hex(3)}"
                cur = conn.execute(
                    "INSERT INTO relay_inbox_refusal (refusal_id, entry, kind, reason) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (entry, kind) WHERE resolved_at IS NULL DO NOTHING",
                    (refusal_id, name, kind, reason),
                )
                if cur.rowcount == 1:
                    added.append((refusal_id, kind, reason))
            # "/" cannot occur in a file name: kind/name is unambiguous.
            keep = [f"{kind}/{name}" for name, kind, _ in refused]
            conn.execute(
                "UPDATE relay_inbox_refusal SET resolved_at = now()"
                " WHERE resolved_at IS NULL AND NOT (kind || '/' || entry = ANY(%s))",
                (keep,),
            )
        return added

    def refusals(self, include_resolved: bool = False, limit: int = 100) -> list[Refusal]:
        where = "" if include_resolved else "WHERE resolved_at IS NULL"
        with self._connect() as conn:
            rows = conn.execute(f"SELECT * FROM relay_inbox_refusal {where} ORDER BY first_seen DESC LIMIT %s",
                                (limit,)).fetchall()
        return [Refusal(**r) for r in rows]

    # -- batches ------------------------------------------------------------------------------------------
    def create_batch(self, batch_id: str, folder: str) -> bool:
        """Record a claimed batch; returns False if it was recorded already (a claim is recorded once)."""
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO relay_batch (batch_id, folder) VALUES (%s, %s) ON CONFLICT (batch_id) DO NOTHING",
                (batch_id, folder),
            )
            return cur.rowcount == 1

    def get_batch(self, batch_id: str) -> Batch | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM relay_batch WHERE batch_id = %s", (batch_id,)).fetchone()
            if row is None:
                return None
            batch = Batch(**row)
            batch.counts = self._counts(conn, batch_id)
            return batch

    def list_batches(self, limit: int = 50, status: str | None = None) -> list[Batch]:
        with self._connect() as conn:
            if status:
                rows = conn.execute(
                    "SELECT * FROM relay_batch WHERE status = %s ORDER BY created_at DESC LIMIT %s", (status, limit)
                ).fetchall()
            else:
                rows = conn.execute("SELECT * FROM relay_batch ORDER BY created_at DESC LIMIT %s", (limit,)).fetchall()
            batches = [Batch(**r) for r in rows]
            for b in batches:
                b.counts = self._counts(conn, b.batch_id)
            return batches

    @staticmethod
    def _counts(conn, batch_id: str) -> dict[str, int]:
        rows = conn.execute(
            "SELECT state, count(*) AS n FROM relay_instance WHERE batch_id = %s GROUP BY state", (batch_id,)
        ).fetchall()
        return {r["state"]: r["n"] for r in rows}

    def set_status(self, batch_id: str, status: str, *, run_id: str | None = None, finished: bool = False) -> None:
        if status not in BATCH_STATES:
            raise ValueError(f"unknown batch status {status!r}")
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE relay_batch SET status = %s, run_id = coalesce(%s, run_id), updated_at = now(),"
                " finished_at = CASE WHEN %s THEN now() ELSE NULL END WHERE batch_id = %s",
                (status, run_id, finished, batch_id),
            )
            if cur.rowcount != 1:
                raise KeyError(f"no batch {batch_id}")

    def add_error(self, batch_id: str, task: str, message: str, *, transient: bool = False, status: str | None = "ERROR",
                  attempt: int | None = None) -> None:
        """Append a readable error to the batch (and, by default, set it to ERROR). ``attempt`` is the Airflow
        try number of the task that failed, when known."""
        entry = {"at": _now().isoformat(timespec="seconds"), "task": task, "message": message, "transient": transient}
        if attempt is not None:
            entry["attempt"] = attempt
        with self._connect() as conn:
            conn.execute(
                "UPDATE relay_batch SET errors = errors || %s::jsonb, has_error = true, updated_at = now(),"
                " status = coalesce(%s, status) WHERE batch_id = %s",
                (Jsonb([entry]), status, batch_id),
            )

    def merge_summary(self, batch_id: str, task: str, summary: dict) -> None:
        """Keep each task's summary (the same dict that goes to XCom) on the batch row."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE relay_batch SET summary = summary || %s::jsonb, updated_at = now() WHERE batch_id = %s",
                (Jsonb({task: summary}), batch_id),
            )

    # -- operations (migration 2; used by dicom_relay.operations) ----------------------------------------------
    def record_decision(self, batch_id: str, decision: dict, *, expect_rerun_count: int | None = None,
                        count_rerun: bool = False) -> Batch | None:
        """Store ``decision`` (plus ``at``) as the batch's ``last_decision``, optionally counting one more rerun.

        With ``expect_rerun_count`` the update only happens if ``rerun_count`` still has that value and the batch
        is still in ERROR (two deciders cannot both spend the same attempt). Returns the updated batch, or None
        when nothing was updated. ``updated_at`` is left alone: a decision is not progress of the batch.
        """
        # ``at`` comes from the database clock, like ``run_started_at`` it is compared with.
        sql = "UPDATE relay_batch SET last_decision = %s::jsonb || jsonb_build_object('at', clock_timestamp())"
        if count_rerun:
            sql += ", rerun_count = rerun_count + 1"
        sql += " WHERE batch_id = %s"
        args: list[Any] = [Jsonb(decision), batch_id]
        if expect_rerun_count is not None:
            sql += " AND rerun_count = %s AND status = 'ERROR'"
            args.append(expect_rerun_count)
        with self._connect() as conn:
            row = conn.execute(sql + " RETURNING *", args).fetchone()
            if row is None:
                return None
            batch = Batch(**row)
            batch.counts = self._counts(conn, batch_id)
            return batch

    def next_requeue_number(self, batch_id: str) -> int:
        """Count one more requeue of the batch and return its number (1, 2, ...)."""
        with self._connect() as conn:
            row = conn.execute(
                "UPDATE relay_batch SET requeue_count = requeue_count + 1 WHERE batch_id = %s RETURNING requeue_count",
                (batch_id,),
            ).fetchone()
            if row is None:
                raise KeyError(f"no batch {batch_id}")
            return row["requeue_count"]

    def batches_in(self, status: str) -> list[Batch]:
        """Every batch in ``status``, oldest first (no limit: the rerun decision must see them all)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM relay_batch WHERE status = %s ORDER BY created_at, batch_id", (status,)
            ).fetchall()
            batches = [Batch(**r) for r in rows]
            for b in batches:
                b.counts = self._counts(conn, b.batch_id)
            return batches

    # -- instances ----------------------------------------------------------------------------------------
    def add_instances(self, batch_id: str, instances: Iterable[Instance]) -> int:
        """Record instances found by import; ones already recorded (a rerun of import) are left as they are."""
        rows = [(batch_id, i.relpath, i.state, i.sop_class_uid, i.size_bytes, i.error) for i in instances]
        if not rows:
            return 0
        with self._connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO relay_instance (batch_id, relpath, state, sop_class_uid, size_bytes, error)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (batch_id, relpath) DO NOTHING",
                rows,
            )
        return len(rows)

    def instances(self, batch_id: str, states: Sequence[str] | None = None) -> list[Instance]:
        with self._connect() as conn:
            if states:
                rows = conn.execute(
                    "SELECT * FROM relay_instance WHERE batch_id = %s AND state = ANY(%s) ORDER BY relpath",
                    (batch_id, list(states)),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM relay_instance WHERE batch_id = %s ORDER BY relpath", (batch_id,)
                ).fetchall()
            return [Instance(**{k: r[k] for k in INSTANCE_FIELDS}) for r in rows]

    def update_instances(self, batch_id: str, changes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Apply ``(relpath, {column: value})`` changes in one transaction.

        The rows are updated in relpath order (a stable sort: two changes of one row keep their order): two
        transactions that update overlapping rows (a rerun beside a step still running) then lock them in
        the same order and wait for each other instead of deadlocking."""
        if not changes:
            return
        changes = sorted(changes, key=lambda change: change[0])
        # Pipeline mode: the updates go out without a round trip each (500 instances: one wait, not 500).
        with self._connect() as conn, conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            for relpath, values in changes:
                unknown = set(values) - set(INSTANCE_FIELDS)
                if unknown:
                    raise ValueError(f"unknown instance column(s) {sorted(unknown)}")
                cols = ", ".join(f"{k} = %s" for k in values)
                cur.execute(
                    f"UPDATE relay_instance SET {cols}, updated_at = now() WHERE batch_id = %s AND relpath = %s",
                    (*(Jsonb(v) if isinstance(v, dict) else v for v in values.values()), batch_id, relpath),
                )

    def set_instance_state(self, batch_id: str, state: str, relpaths: Sequence[str] | None = None, *,
                           from_states: Sequence[str] | None = None) -> int:
        if state not in INSTANCE_STATES:
            raise ValueError(f"unknown instance state {state!r}")
        sql = "UPDATE relay_instance SET state = %s, updated_at = now() WHERE batch_id = %s"
        args: list[Any] = [state, batch_id]
        if relpaths is not None:
            sql += " AND relpath = ANY(%s)"
            args.append(list(relpaths))
        if from_states is not None:
            sql += " AND state = ANY(%s)"
            args.append(list(from_states))
        with self._connect() as conn:
            return conn.execute(sql, args).rowcount


def to_json(batches: Sequence[Batch]) -> str:
    return json.dumps([b.public() for b in batches], indent=2)
