"""The "Relay batches" page inside the Airflow UI: one row per batch, to work from.

Served by the api-server as a plugin FastAPI app (see plugins/dicom_relay_plugin.py), shown in the Airflow UI's
frame under Browse. Airflow does not authenticate plugin apps, so every route here requires the same user the
Airflow UI has (its JWT cookie or a Bearer token); a page request without a valid session sends the whole window
(not the frame) to Airflow's login page, and comes back after it.

Per batch: status, instance counts, the Airflow run (grid) and its task logs, errors with their attempt, time and
whether a later attempt of the same task resolved them, files held back (counts and reasons, by label) with a link
to their review under Required Actions. A status filter and a refresh button. Everyone who may read DAG runs sees
the page; acting (a requeue) needs the right to trigger process_study runs (roles User, Op, Admin), which a Viewer
lacks. Never a folder or file name.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any
from urllib.parse import quote

from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from dicom_relay import operations, quarantine
from dicom_relay.airflow import connections
from dicom_relay.config import Settings
from dicom_relay.status import BATCH_STATES, StatusStore, StatusTablesMissing

STATUS_COLOURS = {"DONE": "#1e8449", "ERROR": "#c0392b", "EMPTY": "#7f8c8d", "HELD_BACK": "#b9770e"}
DAG = operations.PROCESS_DAG


def _settings() -> Settings:
    """Folders from the environment; the status database from the relay_db Connection (the api-server is given
    no endpoint variable)."""
    return Settings.from_env().with_overrides(db_url=connections.status_db_url())


def _held(settings: Settings, batch_id: str) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for label, reason in quarantine.held(settings.batches_dir / batch_id / quarantine.QUARANTINE).items():
        reasons.setdefault(reason, []).append(label)
    return reasons


def _resolved(error: dict, summary: dict) -> bool:
    """Whether the task of this error succeeded after it (a later attempt or a later run)."""
    finished = (summary.get(error.get("task")) or {}).get("finished_at")
    return bool(finished and error.get("at") and finished >= error["at"])


def _batches(limit: int, status: str | None) -> list[dict]:
    settings = _settings()
    store = StatusStore(settings.db_url)
    out = []
    for b in store.list_batches(limit=limit, status=status):
        row = b.public()
        row["errors"] = [{**e, "resolved": _resolved(e, b.summary or {})} for e in b.errors]
        row["held_back"] = _held(settings, b.batch_id) if b.status not in ("PROCESSING",) else {}
        out.append(row)
    return out


def _can_act(user: Any) -> bool:
    """Acting on a batch starts a process_study run: the same right as triggering one in Airflow."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                     details=DagDetails(id=DAG), user=user))


def _run_links(run_id: str | None) -> str:
    if not run_id:
        return "-"
    run = f"../dags/{DAG}/runs/{quote(run_id, safe='')}"
    return f"<a class='af' href='{run}'><code>{html.escape(run_id)}</code></a>"


def _task_log_link(run_id: str | None, task: str, attempt: int | None) -> str:
    if not run_id or task in ("quarantine", "review"):
        return html.escape(task)
    href = f"../dags/{DAG}/runs/{quote(run_id, safe='')}/tasks/{quote(task, safe='')}"
    if attempt:
        href += f"?try_number={int(attempt)}"
    return f"<a class='af' href='{href}'>{html.escape(task)}</a>"


def _error_line(e: dict, run_id: str | None) -> str:
    attempt = e.get("attempt")
    when = html.escape(str(e.get("at", ""))[:19].replace("T", " "))
    head = f"{_task_log_link(run_id, e.get('task', ''), attempt)}" + (f" attempt {int(attempt)}" if attempt else "")
    text = html.escape(e.get("message", ""))
    if operations.is_note(e):
        return f"<div class='note'>{when} {head}: {text}</div>"
    mark = "<span class='ok'>resolved by a later attempt</span>" if e.get("resolved") else "<span class='bad'>unresolved</span>"
    cls = "old" if e.get("resolved") else "err"
    return f"<div class='{cls}'>{when} {head}: {text} — {mark}</div>"


def render(batches: list[dict], status: str | None = None, can_act: bool = False, user: str = "") -> str:
    rows = []
    for b in batches:
        counts = " ".join(f"{k}={v}" for k, v in sorted(b["instances"].items())) or "-"
        errors = "".join(_error_line(e, b.get("run_id")) for e in b["errors"])
        colour = STATUS_COLOURS.get(b["status"], "#2471a3")
        decision = b.get("last_decision") or {}
        decided = html.escape(f"{decision['decision']}: {decision.get('reason', '')}") if decision else ""
        held = b.get("held_back") or {}
        held_html = ""
        if held:
            n = sum(len(v) for v in held.values())
            held_html = f"<b>{n}</b>: " + "<br>".join(
                html.escape(f"{len(labels)} {reason} ({', '.join(labels)})") for reason, labels in sorted(held.items()))
            review = (f"../dags/{DAG}/runs/{quote(b['run_id'], safe='')}/tasks/review/required_actions"
                      if b.get("run_id") else "../required_actions")
            held_html += f" <br><a class='af review' href='{review}'>review under Required Actions</a>"
        action = ""
        if can_act and b["status"] in ("ERROR", "NEW"):
            action = (f"<form method='post' action='batches/{quote(b['batch_id'], safe='')}/requeue'>"
                      "<button type='submit'>Requeue</button></form>")
        rows.append(
            f"<tr class='batch' data-status='{html.escape(b['status'])}'>"
            f"<td class='nw'><code>{html.escape(b['batch_id'])}</code></td>"
            f"<td style='color:{colour};font-weight:bold'>{html.escape(b['status'])}</td>"
            f"<td>{html.escape(counts)}</td><td class='nw'>{_run_links(b.get('run_id'))}</td>"
            f"<td class='nw'>{html.escape(b['updated_at'][:19].replace('T', ' '))}</td>"
            f"<td class='held'>{held_html}</td><td class='errs'>{errors}</td><td>{decided}</td><td>{action}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=9>No batches yet.</td></tr>"
    options = "".join(
        f"<option value='{s}'{' selected' if s == status else ''}>{s}</option>" for s in ("",) + BATCH_STATES
    ).replace("<option value=''>", "<option value=''>all")
    role = "" if can_act else " You can read this page; acting on batches needs the Op or Admin role."
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Relay batches</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;width:100%}}
td,th{{border-bottom:1px solid #ddd;padding:.4em;text-align:left;vertical-align:top}}.errs{{font-size:.85em}}
.err{{color:#922}}.old{{color:#888}}.note{{color:#555}}.ok{{color:#1e8449}}.bad{{color:#c0392b;font-weight:bold}}
.nw{{white-space:nowrap}}.held{{font-size:.85em;color:#b9770e}}</style>
</head><body><h2>dicom-relay batches</h2>
<form method="get" id="filter">Status <select name="status" onchange="this.form.submit()">{options}</select>
<button type="submit" id="refresh">Refresh</button> <span class="who">Signed in as {html.escape(user)}.{role}</span></form>
<p>Statuses from the relay's own tables. Batches are named by batch id; folder and file names are not shown.
HELD_BACK: delivered except for files held back for review.</p>
<script>{FOLLOW_IN_AIRFLOW}</script>
<table><tr><th>Batch</th><th>Status</th><th>Instances</th><th>Airflow run</th><th>Updated (UTC)</th>
<th>Held back</th><th>Errors</th><th>Last decision</th><th></th></tr>
{body}</table></body></html>"""


# Airflow shows this page in a sandboxed frame (no top navigation): a link to an Airflow page is followed by the
# Airflow UI's own router (history + popstate on the same-origin parent), as its own links are. Outside a frame,
# links work as usual.
FOLLOW_IN_AIRFLOW = """document.addEventListener('click', function (e) {
  var a = e.target.closest && e.target.closest('a.af');
  if (!a || window.top === window) return;
  try { window.top.history.pushState({}, '', a.href);
        window.top.dispatchEvent(new PopStateEvent('popstate', {state: {}})); e.preventDefault(); } catch (err) {}
});"""


# An expired session shows Airflow's login form (in the frame, whose sandbox forbids navigating the whole window),
# which comes back to this page once signed in. Never a raw 401 JSON.
LOGIN_REDIRECT = """<!doctype html><html><head><meta charset="utf-8"><title>Signed out</title></head><body>
<p>Your session has expired. <a id="login" href="{login}">Sign in again</a>.</p>
<script>location.replace("{login}?next=" + encodeURIComponent(location.href));</script>
</body></html>"""


app = FastAPI(title="dicom-relay")


@app.exception_handler(StatusTablesMissing)
async def tables_missing(request, exc: StatusTablesMissing) -> PlainTextResponse:
    # The page does not migrate (that happens once at start); it says what to run instead of a bare 500.
    return PlainTextResponse(str(exc), status_code=503)


@app.get("/batches.json", dependencies=[Depends(get_user)])
async def batches_json(limit: int = Query(100, le=1000), status: str | None = None) -> list[dict]:
    return await asyncio.to_thread(_batches, limit, status or None)


@app.get("/", response_class=HTMLResponse)
async def batches_page(request: Request, limit: int = Query(100, le=1000), status: str | None = None):
    from fastapi.security import HTTPAuthorizationCredentials

    user = None
    auth = request.headers.get("authorization", "")
    try:
        creds = HTTPAuthorizationCredentials(scheme="Bearer", credentials=auth[7:]) if auth.lower().startswith("bearer ") else None
        user = await get_user(request, None, creds)
    except HTTPException as exc:
        if exc.status_code not in (401, 403):
            raise
    if user is None:
        from airflow.api_fastapi.app import get_auth_manager

        return HTMLResponse(LOGIN_REDIRECT.format(login=get_auth_manager().get_url_login()), status_code=401)
    batches = await asyncio.to_thread(_batches, limit, status or None)
    return render(batches, status or None, can_act=_can_act(user), user=user.get_name())


@app.post("/batches/{batch_id}/requeue")
async def requeue(batch_id: str, user=Depends(get_user)) -> dict:
    """Start a process_study run for the batch (as ``dicom-relay requeue``); Op and Admin only."""
    if not _can_act(user):
        raise HTTPException(403, "acting on batches needs the Op or Admin role")
    from dicom_relay.airflow_client import AirflowClient

    def go() -> str:
        return operations.requeue(StatusStore(connections.status_db_url()), AirflowClient.from_env(), batch_id)

    try:
        run_id = await asyncio.to_thread(go)
    except operations.OperationError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"batch_id": batch_id, "run_id": run_id, "requested_by": user.get_name()}
