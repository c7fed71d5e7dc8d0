"""The one retry layer inside a task: tenacity, retrying ``TransientError`` with doubling delays.

Each call a task makes to a service is retried by exactly one layer inside the task attempt, and Airflow's task
retries (``retries``, ``retry_delay``, ``execution_timeout``) come on top, between attempts:

- Orthanc (pynetdicom C-STORE, REST checks) and the identifier service (REST) use ``retrying`` below;
- google-cloud-storage retries each request by itself (its ``DEFAULT_RETRY`` with the deadline
  ``RELAY_GCS_RETRY_SECONDS``), so the pipeline does not wrap GCS calls again.

Permanent errors are never retried (they wait for a person) and pass through unchanged.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .errors import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")


def gave_up(what: str) -> Callable[[Exception, int], Exception]:
    """The default last error: a ``TransientError`` that says what was tried and how often."""
    return lambda exc, attempts: TransientError(f"{what}: {exc} (gave up after {attempts} attempts)")


def retrying(what: str, attempts: int, backoff_seconds: float,
             error: Optional[Callable[[Exception, int], Exception]] = None) -> Retrying:
    """A tenacity ``Retrying`` for calls to ``what``: up to ``attempts`` calls (at least one), sleeping
    ``backoff_seconds``, then twice that, ... between them, on ``TransientError`` only. When the last attempt
    fails too, ``error(last_exception, attempts_made)`` is raised (default: ``gave_up(what)``).

    Use as ``retrying(...)(fn)``.
    """
    make_error = error or gave_up(what)

    def before_sleep(state: RetryCallState) -> None:
        # The message of a relay error is safe to log (no identifier); the type name says the rest.
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: attempt %d of %d failed (%s); retrying in %.1fs", what, state.attempt_number,
                    max(1, attempts), exc, state.next_action.sleep if state.next_action else 0.0)

    return Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=backoff_seconds, exp_base=2, min=backoff_seconds),
        before_sleep=before_sleep,
        retry_error_callback=lambda state: _raise(make_error(state.outcome.exception(), state.attempt_number)),
    )


def _raise(exc: Exception):
    raise exc from None


def call(what: str, attempts: int, backoff_seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` under ``retrying(what, attempts, backoff_seconds)``."""
    return retrying(what, attempts, backoff_seconds)(fn)
