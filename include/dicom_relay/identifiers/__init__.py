"""Pseudonyms and date jitter per patient: the identifier contract, its local and REST providers.

``provider_from_settings`` picks the provider: the embedded keyed ``LocalProvider`` when
``RELAY_IDENTIFIER_URL`` is empty, else a ``RestProvider`` for that service. The reference service lives in
``dicom_relay.identifiers.service`` (imported only when run: it needs FastAPI and uvicorn).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from dicom_relay.identifiers.local import LocalProvider
from dicom_relay.identifiers.models import (
    JITTER_MAX_DAYS,
    Entity,
    EntityResult,
    IdentifierError,
    IdentifierUnavailable,
    Item,
    ItemResult,
    entities_from_request,
    request_body,
    results_body,
    results_from_answer,
    shift_date,
)

__all__ = [
    "JITTER_MAX_DAYS",
    "Entity",
    "EntityResult",
    "IdentifierError",
    "IdentifierProvider",
    "IdentifierUnavailable",
    "Item",
    "ItemResult",
    "LocalProvider",
    "RestProvider",
    "entities_from_request",
    "provider_from_settings",
    "request_body",
    "results_body",
    "results_from_answer",
    "shift_date",
]


@runtime_checkable
class IdentifierProvider(Protocol):
    name: str  # "local" or "rest"

    def lookup(self, study_name: str, entities: Sequence[Entity]) -> list[EntityResult]:
        """One result per entity, in order; raises ``IdentifierError`` or ``IdentifierUnavailable``."""
        ...


def __getattr__(name: str):
    # RestProvider on first use: it brings requests, urllib3 and tenacity (~0.05 CPU-s), which the embedded
    # provider (``dicom-relay deidentify``) never needs.
    if name == "RestProvider":
        from dicom_relay.identifiers.rest import RestProvider

        return RestProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def provider_from_settings(settings) -> IdentifierProvider:
    """``LocalProvider(settings.secret_key)`` when ``settings.identifier_url`` is empty, else a ``RestProvider``."""
    if not settings.identifier_url.strip():
        return LocalProvider(settings.secret_key.get_secret_value())
    from dicom_relay.identifiers.rest import RestProvider

    return RestProvider(
        settings.identifier_url.strip(),
        token=settings.identifier_token.get_secret_value(),
        timeout=settings.identifier_timeout,
        retries=settings.identifier_retries,
    )
