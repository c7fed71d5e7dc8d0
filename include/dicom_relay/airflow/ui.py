"""The "Relay batches" page inside the Airflow UI: batch status, instance counts and readable errors.

Served by the api-server as a plugin FastAPI app (see plugins/dicom_relay_plugin.py). Airflow does not authenticate
plugin apps, so every route here requires the same user the Airflow UI has (its JWT cookie or a Bearer token).
It shows what ``dicom-relay status`` shows: batch ids, statuses, counts, errors, run ids; never a folder name.
"""

from __future__ import annotations

import asyncio
import html

from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, PlainTextResponse

from dicom_relay.airflow import connections
from dicom_relay.status import StatusStore, StatusTablesMissing

STATUS_COLOURS = {"DONE": "#1e8449", "ERROR": "#c0392b", "EMPTY": "#7f8c8d"}


def _batches(limit: int, status: str | None) -> list[dict]:
    store = StatusStore(connections.status_db_url())
    return [b.public() for b in store.list_batches(limit=limit, status=status)]


def render(batches: list[dict]) -> str:
    rows = []
    for b in batches:
        counts = " ".join(f"{k}={v}" for k, v in sorted(b["instances"].items())) or "-"
        errors = "<br>".join(html.escape(f"{e['task']}: {e['message']}") for e in b["errors"]) or ""
        colour = STATUS_COLOURS.get(b["status"], "#2471a3")
        decision = b.get("last_decision") or {}
        decided = html.escape(f"{decision['decision']}: {decision.get('reason', '')}") if decision else ""
        rows.append(
            f"<tr><td class='nw'><code>{html.escape(b['batch_id'])}</code></td>"
            f"<td style='color:{colour};font-weight:bold'>{html.escape(b['status'])}</td>"
            f"<td>{html.escape(counts)}</td><td class='nw'><code>{html.escape(b['run_id'] or '-')}</code></td>"
            f"<td class='nw'>{html.escape(b['updated_at'][:19].replace('T', ' '))}</td><td class='err'>{errors}</td><td>{decided}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=7>No batches yet.</td></tr>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Relay batches</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;width:100%}}
td,th{{border-bottom:1px solid #ddd;padding:.4em;text-align:left;vertical-align:top}}.err{{font-size:.85em;color:#922}}.nw{{white-space:nowrap}}</style>
</head><body><h2>dicom-relay batches</h2>
<p>Statuses from the relay's own tables. Batches are named by batch id; folder names are not shown.</p>
<table><tr><th>Batch</th><th>Status</th><th>Instances</th><th>Airflow run</th><th>Updated (UTC)</th><th>Errors</th><th>Last rerun decision</th></tr>
{body}</table></body></html>"""


app = FastAPI(title="dicom-relay", dependencies=[Depends(get_user)])


@app.exception_handler(StatusTablesMissing)
async def tables_missing(request, exc: StatusTablesMissing) -> PlainTextResponse:
    # The page does not migrate (that happens once at start); it says what to run instead of a bare 500.
    return PlainTextResponse(str(exc), status_code=503)


@app.get("/batches.json")
async def batches_json(limit: int = Query(100, le=1000), status: str | None = None) -> list[dict]:
    return await asyncio.to_thread(_batches, limit, status)


@app.get("/", response_class=HTMLResponse)
async def batches_page(limit: int = Query(100, le=1000), status: str | None = None) -> str:
    return render(await asyncio.to_thread(_batches, limit, status))
