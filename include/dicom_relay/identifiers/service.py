"""Reference identifier service: the DASHER-style contract of ``LINEAGE.md``, backed by SQLite.

Run it with::

    python -m dicom_relay.identifiers.service --host 127.0.0.1 --port 8000 --db identifiers.sqlite

with the token in ``RELAY_IDENTIFIER_TOKEN`` (``--token T`` also works, but ``ps`` shows it). The service does
not start without a token, or with a placeholder one (``change-me``...).

- ``POST /uid/{study_name}`` answers one pseudonym and one jitter per patient and one pseudonym per item.
  A patient (``(id_source, id)``, surrounding spaces ignored) seen for the first time gets a random pseudonym
  (``"P-"`` + 16 hex digits) and a random nonzero jitter in ``[-365, -1] ∪ [1, 365]`` days; an item gets
  ``"A-"`` + 14 hex digits (16 characters, an AccessionNumber's maximum). Both are stored, so the same
  identifier gets the same answer on every later call and after a restart. Items take their patient's jitter.
- ``GET /health`` answers ``{"status": "ok"}`` when the database answers; it needs no token.
- Every other request needs ``Authorization: Bearer <token>`` (HTTP 401 otherwise).

The database holds the identifiers themselves (it is the lineage: it is what lets an honest broker go back),
so it is created readable by its owner only. The service logs counts and the study name (a batch id) of an
authorised request, never an identifier, a date or a request body; of a refused request it logs nothing but that
one was refused (a running count); uvicorn's access log is off.
"""

import argparse
import datetime as dt
import hmac
import logging
import os
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

from dicom_relay.config import is_placeholder
from dicom_relay.identifiers.models import (
    JITTER_MAX_DAYS,
    Entity,
    EntityResult,
    IdentifierError,
    ItemResult,
    entities_from_request,
    identity_key,
    results_body,
)

log = logging.getLogger("dicom_relay.identifiers.service")

TOKEN_ENV = "RELAY_IDENTIFIER_TOKEN"

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    id_source  TEXT NOT NULL,
    id         TEXT NOT NULL,
    suid       TEXT NOT NULL UNIQUE,
    jitter     INTEGER NOT NULL CHECK (jitter != 0),
    created_at TEXT NOT NULL,
    PRIMARY KEY (id_source, id)
);
CREATE TABLE IF NOT EXISTS items (
    id_source  TEXT NOT NULL,
    id         TEXT NOT NULL,
    suid       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (id_source, id)
);
"""


def new_patient_pseudonym() -> str:
    return "P-" + secrets.token_hex(8)


def new_item_pseudonym() -> str:
    return "A-" + secrets.token_hex(7)


def new_jitter() -> int:
    days = secrets.randbelow(JITTER_MAX_DAYS) + 1
    return days if secrets.randbelow(2) else -days


class PseudonymStore:
    """The mapping, in one SQLite file; safe to share between threads (and between processes, through SQLite)."""

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file owner-only before SQLite opens it; SQLite gives its journal the same mode.
        os.close(os.open(self.db_path, os.O_CREAT | os.O_RDWR, 0o600))
        self._conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def healthy(self) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1").fetchone() == (1,)

    def _get_or_create(self, table: str, key: tuple[str, str], make) -> tuple[tuple, bool]:
        """The stored row for ``key`` (``suid`` or ``suid, jitter``), creating it on first sight."""
        columns = "suid, jitter" if table == "patients" else "suid"
        query = f"SELECT {columns} FROM {table} WHERE id_source = ? AND id = ?"
        row = self._conn.execute(query, key).fetchone()
        if row is not None:
            return row, False
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for _ in range(10):
            values = make()
            try:
                self._conn.execute(
                    f"INSERT INTO {table} (id_source, id, {columns}, created_at) "
                    f"VALUES (?, ?, {', '.join('?' * len(values))}, ?)",
                    (*key, *values, now),
                )
                return values, True
            except sqlite3.IntegrityError:
                # Either another process stored this identifier meanwhile, or the random pseudonym is taken.
                row = self._conn.execute(query, key).fetchone()
                if row is not None:
                    return row, False
        raise RuntimeError(f"could not draw a free pseudonym for the {table} table")

    def lookup(self, entities: Sequence[Entity]) -> tuple[list[EntityResult], dict[str, int]]:
        counts = {"patients": len(entities), "new_patients": 0, "items": 0, "new_items": 0}
        results = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for entity in entities:
                    (suid, jitter), new = self._get_or_create(
                        "patients",
                        identity_key(entity.id_source, entity.id),
                        lambda: (new_patient_pseudonym(), new_jitter()),
                    )
                    counts["new_patients"] += new
                    items = []
                    for item in entity.items:
                        (item_suid,), new_item = self._get_or_create(
                            "items", identity_key(item.id_source, item.id), lambda: (new_item_pseudonym(),)
                        )
                        counts["items"] += 1
                        counts["new_items"] += new_item
                        items.append(ItemResult.answer(item, item_suid, jitter))
                    results.append(EntityResult.answer(entity, suid, jitter, items))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return results, counts


def create_app(store: PseudonymStore, token: str):
    """The FastAPI application over ``store``; every request but ``/health`` needs ``Bearer <token>``.

    The token is required: a service without one would hand out the mapping to anyone who reaches it.
    """
    if is_placeholder(token):
        raise ValueError(f"the identifier service needs a token ({TOKEN_ENV}) that is not empty or a placeholder")
    # Imported here so that the library (and the stack launcher) can name this module without FastAPI.
    # No ``from __future__ import annotations`` in this module: FastAPI must see ``Request`` itself.
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    app = FastAPI(title="dicom-relay identifier service", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {token}".encode()

    def authorized(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    def refuse() -> JSONResponse:
        return JSONResponse(
            {"detail": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    refused = [0]

    @app.get("/health")
    async def health():
        ok = await run_in_threadpool(store.healthy)
        return JSONResponse({"status": "ok" if ok else "error"}, status_code=200 if ok else 503)

    @app.post("/uid/{study_name}")
    async def uid(study_name: str, request: Request):
        if not authorized(request):
            # Nothing of the request is logged (its path names a study, its header holds a guess of the token);
            # the count of refusals is all an operator needs to notice probing.
            refused[0] += 1
            log.warning("refused a request without the right token (%d so far)", refused[0])
            return refuse()
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"detail": "the request body is not JSON"}, status_code=400)
        try:
            entities = entities_from_request(body)
        except IdentifierError as exc:  # its message names positions only
            return JSONResponse({"detail": str(exc)}, status_code=400)
        results, counts = await run_in_threadpool(store.lookup, entities)
        log.info(
            "study %s: %d patient(s) (%d new), %d item(s) (%d new)",
            study_name, counts["patients"], counts["new_patients"], counts["items"], counts["new_items"],
        )
        return JSONResponse(results_body(results))

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicom_relay.identifiers.service", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", required=True, type=Path, help="SQLite file holding the mapping (created if missing)")
    parser.add_argument("--token", default=None, help=f"bearer token required from clients (default: ${TOKEN_ENV})")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    if is_placeholder(token):
        # Refuse to start: without a token any client that reaches the port gets the mapping.
        parser.error(f"{TOKEN_ENV} (or --token) is empty or a placeholder; set a long random token")

    import uvicorn

    store = PseudonymStore(args.db)
    try:
        uvicorn.run(
            create_app(store, token),
            host=args.host,
            port=args.port,
            access_log=False,
            log_level=args.log_level.lower(),
        )
    finally:
        store.close()


if __name__ == "__main__":
    main()
