"""Client of a DASHER-style identifier service: one ``POST <base>/uid/<study_name>`` per batch.

Failure policy (the batch must never go on with a missing or made-up pseudonym):

- connection refused, timeouts, HTTP 5xx and 429 are retried ``retries`` times with exponential backoff
  (``backoff``, ``2 * backoff``, ...; ``dicom_relay.retrying``, the one retry layer inside a task), then raise
  ``IdentifierUnavailable`` (transient: Airflow's retries and a later rerun may work);
- HTTP 401/403 raise ``IdentifierError`` at once naming ``RELAY_IDENTIFIER_TOKEN``: there is no token endpoint
  to refresh from, so a person has to fix the token;
- any other answer that is not a complete one (other HTTP errors, a body that is not JSON, an entity or item
  without a pseudonym or jitter) raises ``IdentifierError``.

Messages name the service by URL and entities by position, never an identifier; response bodies are never
quoted (a service may echo the identifiers it was sent).
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import quote

import requests

from dicom_relay.retrying import retrying
from dicom_relay.identifiers.models import (
    Entity,
    EntityResult,
    IdentifierError,
    IdentifierUnavailable,
    request_body,
    results_from_answer,
    validate_entities,
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class RestProvider:
    name = "rest"

    def __init__(
        self,
        base_url: str,
        token: str = "",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        if not base_url:
            raise ValueError("RestProvider needs the identifier service's base URL")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff

    def __repr__(self) -> str:  # never show the token
        return f"RestProvider({self.base_url!r}, retries={self.retries})"

    def lookup(self, study_name: str, entities: Sequence[Entity]) -> list[EntityResult]:
        validate_entities(entities)
        if not entities:
            return []
        url = f"{self.base_url}/uid/{quote(study_name, safe='')}"
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        body = request_body(entities)

        with requests.Session() as session:

            def post() -> requests.Response:
                try:
                    response = session.post(url, json=body, headers=headers, timeout=self.timeout)
                except requests.Timeout:
                    raise IdentifierUnavailable(f"no answer within {self.timeout:g}s") from None
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                    raise IdentifierUnavailable(f"connection failed ({type(exc).__name__})") from None
                except requests.RequestException as exc:  # a bad URL, say: retrying will not help
                    raise IdentifierError(
                        f"identifier service {self.base_url} cannot be asked ({type(exc).__name__})"
                    ) from None
                if response.status_code in RETRY_STATUSES:
                    raise IdentifierUnavailable(f"HTTP {response.status_code}")
                return response

            response = retrying(
                f"identifier service {self.base_url}", self.retries + 1, self.backoff,
                error=lambda problem, attempts: IdentifierUnavailable(
                    f"identifier service {self.base_url} unavailable after {attempts} attempt(s): {problem}"
                ),
            )(post)
        return self._read(response, entities)

    def _read(self, response: requests.Response, entities: Sequence[Entity]) -> list[EntityResult]:
        status = response.status_code
        if status in (401, 403):
            if self._token:
                hint = "the token in RELAY_IDENTIFIER_TOKEN was refused; check it against the service's token"
            else:
                hint = "the service requires a token and RELAY_IDENTIFIER_TOKEN is empty"
            raise IdentifierError(f"identifier service {self.base_url} answered HTTP {status}: {hint}")
        if not 200 <= status < 300:
            raise IdentifierError(f"identifier service {self.base_url} answered HTTP {status}")
        try:
            answer = response.json()
        except ValueError:
            raise IdentifierError(f"identifier service {self.base_url} answered a body that is not JSON") from None
        return results_from_answer(answer, entities)
