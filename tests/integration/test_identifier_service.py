"""RestProvider against the real reference service, and against real HTTP servers that misbehave."""

import datetime as dt
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from dicom_relay.errors import PermanentError, TransientError
from dicom_relay.identifiers import (
    JITTER_MAX_DAYS,
    Entity,
    IdentifierError,
    IdentifierUnavailable,
    Item,
    RestProvider,
)
from tests.support.stack.identifier_service import start_identifier_service
from tests.support.stack.process import free_port

pytestmark = pytest.mark.integration


def entity(n: int, birth: str | None = "1975-12-31", accessions: tuple[str, ...] = ()) -> Entity:
    return Entity(
        f"IT-MRN-{n:06d}",
        "Stanford MRN",
        birth,
        tuple(Item(acc, "DCM Accession #", "2024-02-29") for acc in accessions),
    )


def rest(handle, **kw) -> RestProvider:
    kw.setdefault("token", handle.token)
    return RestProvider(handle.url, **kw)


# ------------------------------------------------------------------------------------ the reference service


def test_health_needs_no_token(identifier_service):
    answer = requests.get(f"{identifier_service.url}/health", timeout=5)
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def test_same_patient_same_pseudonym_and_jitter_across_calls(identifier_service):
    provider = rest(identifier_service)
    first = provider.lookup("20260101T000000-aaaaaa", [entity(1, accessions=("IT-ACC-1",)), entity(2)])
    second = provider.lookup("20260101T000001-bbbbbb", [entity(2), entity(1, accessions=("IT-ACC-1", "IT-ACC-2"))])
    assert (second[1].suid, second[1].jitter) == (first[0].suid, first[0].jitter)
    assert (second[0].suid, second[0].jitter) == (first[1].suid, first[1].jitter)
    assert second[1].items[0].suid == first[0].items[0].suid
    assert second[1].items[1].suid not in {first[0].items[0].suid, first[0].suid}
    assert first[0].suid != first[1].suid


def test_answers_follow_the_contract(identifier_service):
    result = rest(identifier_service).lookup("b", [entity(3, birth="2000-02-29", accessions=("IT-ACC-3",))])[0]
    assert re.fullmatch(r"P-[0-9a-f]{16}", result.suid)
    assert re.fullmatch(r"A-[0-9a-f]{14}", result.items[0].suid)
    assert result.jitter != 0 and -JITTER_MAX_DAYS <= result.jitter <= JITTER_MAX_DAYS
    assert result.jittered_timestamp == (dt.date(2000, 2, 29) + dt.timedelta(days=result.jitter)).isoformat()
    assert result.items[0].jitter == result.jitter
    assert result.items[0].jittered_timestamp == (dt.date(2024, 2, 29) + dt.timedelta(days=result.jitter)).isoformat()
    assert rest(identifier_service).lookup("b", [entity(4, birth=None)])[0].jittered_timestamp is None


def test_new_patients_get_random_not_derived_pseudonyms(identifier_service):
    results = rest(identifier_service).lookup("b", [entity(n) for n in range(100, 160)])
    assert len({r.suid for r in results}) == 60
    assert len({r.jitter for r in results}) > 20
    assert {r.jitter > 0 for r in results} == {True, False}


def test_token_is_required(identifier_service):
    with pytest.raises(IdentifierError) as no_token:
        RestProvider(identifier_service.url).lookup("b", [entity(1)])
    assert "401" in str(no_token.value) and "RELAY_IDENTIFIER_TOKEN is empty" in str(no_token.value)

    with pytest.raises(IdentifierError) as wrong:
        RestProvider(identifier_service.url, token="not-the-token").lookup("b", [entity(1)])
    assert "401" in str(wrong.value) and "RELAY_IDENTIFIER_TOKEN was refused" in str(wrong.value)
    assert "not-the-token" not in str(wrong.value)

    bare = requests.post(f"{identifier_service.url}/uid/b", json={"identifiers": []}, timeout=5)
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"


def test_service_refuses_malformed_requests_by_position(identifier_service):
    answer = requests.post(
        f"{identifier_service.url}/uid/b",
        json={"identifiers": [{"id": "IT-MRN-BAD", "id_source": "MRN", "id_timestamp": "19750101"}]},
        headers={"Authorization": f"Bearer {identifier_service.token}"},
        timeout=5,
    )
    assert answer.status_code == 400
    assert "entity #1" in answer.json()["detail"] and "IT-MRN-BAD" not in answer.text


def test_service_log_holds_no_identifiers(identifier_service):
    rest(identifier_service).lookup("20260101T000002-cccccc", [entity(5, accessions=("IT-ACC-5",))])
    log = identifier_service.process.log_file.read_text()
    assert "20260101T000002-cccccc" in log  # the service does log, by batch id ...
    assert "IT-MRN-" not in log and "IT-ACC-" not in log and "1975-12-31" not in log  # ... never an identifier


def test_mapping_survives_a_restart(tmp_path):
    handle = start_identifier_service(tmp_path, token="restart-token")
    try:
        before = rest(handle).lookup("b", [entity(7, accessions=("IT-ACC-7",))])
        port, db_path = handle.port, handle.db_path
    finally:
        handle.stop()
    assert not handle.process.is_running()
    assert oct(db_path.stat().st_mode & 0o777) == "0o600"  # the lineage holds identifiers: owner only

    handle = start_identifier_service(tmp_path, port=port, token="restart-token")
    try:
        after = rest(handle).lookup("b", [entity(7, accessions=("IT-ACC-7",))])
    finally:
        handle.stop()
    assert after == before


# ------------------------------------------------------------------------ services that fail, for real


def test_nothing_listening_is_retried_then_unavailable_in_bounded_time():
    port = free_port()
    provider = RestProvider(f"http://127.0.0.1:{port}", retries=3, backoff=0.1, timeout=2)
    started = time.monotonic()
    with pytest.raises(IdentifierUnavailable) as info:
        provider.lookup("b", [entity(1)])
    elapsed = time.monotonic() - started
    assert 0.1 + 0.2 + 0.4 <= elapsed < 5  # three backoff sleeps happened, and no more
    assert "4 attempt(s)" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert isinstance(info.value, TransientError)


def test_a_service_that_never_answers_times_out_and_is_unavailable():
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        provider = RestProvider(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=1, backoff=0.05, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(IdentifierUnavailable, match="no answer within 0.5s"):
            provider.lookup("b", [entity(1)])
        assert time.monotonic() - started < 4


class ScriptedServer:
    """A real HTTP server on loopback that answers each POST with the next (status, body) of a script."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(self.rfile.read(length))}
                )
                status, body = outer.script[min(len(outer.requests), len(outer.script)) - 1]
                payload = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def answer_for(entities, **changes):
    body = {
        "results": [
            {
                "id": e.id,
                "id_source": e.id_source,
                "suid": f"P-{n:016x}",
                "jitter": -10,
                "jittered_timestamp": None,
                "items": [
                    {"id": i.id, "id_source": i.id_source, "suid": f"A-{n:014x}", "jitter": -10, "jittered_timestamp": None}
                    for i in e.items
                ],
            }
            for n, e in enumerate(entities)
        ]
    }
    body["results"][0].update(changes)
    return body


def test_request_on_the_wire_is_the_lineage_contract():
    entities = [entity(1, accessions=("IT-ACC-1",))]
    with ScriptedServer([(200, answer_for(entities))]) as server:
        results = RestProvider(server.url, token="tok").lookup("20260101T000000-aaaaaa", entities)
    (seen,) = server.requests
    assert seen["path"] == "/uid/20260101T000000-aaaaaa"
    assert seen["auth"] == "Bearer tok"
    assert seen["body"] == {
        "identifiers": [
            {
                "id": "IT-MRN-000001",
                "id_source": "Stanford MRN",
                "id_timestamp": "1975-12-31",
                "items": [{"id": "IT-ACC-1", "id_source": "DCM Accession #", "id_timestamp": "2024-02-29"}],
            }
        ]
    }
    assert results[0].suid == "P-0000000000000000" and results[0].jittered_timestamp == "1975-12-21"


def test_5xx_is_retried_and_a_later_good_answer_wins():
    entities = [entity(1)]
    with ScriptedServer([(503, {"detail": "busy"}), (502, "bad gateway"), (200, answer_for(entities))]) as server:
        results = RestProvider(server.url, retries=3, backoff=0.01).lookup("b", entities)
    assert len(server.requests) == 3
    assert results[0].suid == "P-0000000000000000"


def test_5xx_that_persists_is_unavailable_after_the_retry_budget():
    with ScriptedServer([(500, {"detail": "IT-MRN-000001 broke me"})]) as server:
        with pytest.raises(IdentifierUnavailable) as info:
            RestProvider(server.url, retries=2, backoff=0.01).lookup("b", [entity(1)])
    assert len(server.requests) == 3
    assert "HTTP 500" in str(info.value) and "IT-MRN" not in str(info.value)


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (200, "answer_without_suid", "without a pseudonym for entity #1"),
        (200, "answer_with_string_jitter", "no whole-day jitter for entity #1"),
        (200, "answer_missing_patient", "answered nothing for entity #2"),
        (200, "<html>proxy login</html>", "not JSON"),
        (404, "not_found_echoing_the_id", "HTTP 404"),
    ],
)
def test_bad_answers_fail_closed_at_once(status, body, expected):
    entities = [entity(1, accessions=("IT-ACC-1",)), entity(2)]
    bodies = {
        "answer_without_suid": answer_for(entities, suid=""),
        "answer_with_string_jitter": answer_for(entities, jitter="-10"),
        "answer_missing_patient": {"results": answer_for(entities)["results"][:1]},
        "not_found_echoing_the_id": {"detail": "IT-MRN-000001 unknown"},
    }
    with ScriptedServer([(status, bodies.get(body, body))]) as server:
        with pytest.raises(IdentifierError) as info:
            RestProvider(server.url, retries=3, backoff=0.01).lookup("b", entities)
    assert len(server.requests) == 1  # permanent: not retried
    assert expected in str(info.value)
    assert "IT-MRN" not in str(info.value) and "IT-ACC" not in str(info.value)
    assert isinstance(info.value, PermanentError) and not isinstance(info.value, TransientError)


def test_refused_request_leaves_nothing_of_itself_in_the_log(identifier_service):
    study = "20260101T000009-dddddd"
    for headers in ({}, {"Authorization": "Bearer guess-of-the-token-7f3a"}):
        answer = requests.post(f"{identifier_service.url}/uid/{study}", headers=headers, timeout=5,
                               json={"identifiers": [{"id": "IT-MRN-REFUSED", "id_source": "MRN"}]})
        assert answer.status_code == 401
    log = identifier_service.process.log_file.read_text()
    assert "refused a request without the right token" in log
    assert study not in log and "guess-of-the-token" not in log and "IT-MRN-REFUSED" not in log


@pytest.mark.parametrize("token", ["", "change-me"])
def test_service_does_not_start_without_a_real_token(tmp_path, token):
    from tests.support.stack.process import ServiceError

    with pytest.raises(ServiceError, match="RELAY_IDENTIFIER_TOKEN .* empty or a placeholder"):
        start_identifier_service(tmp_path, token=token, timeout=20)
