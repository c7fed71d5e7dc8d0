"""The embedded identifier provider: keyed, deterministic pseudonyms and jitter, no service, no state.

Everything is derived with HMAC-SHA256 under ``RELAY_SECRET_KEY`` from ``(id_source, id)`` (surrounding
spaces ignored), each in its own domain so that no two derived values are related:

- a patient's pseudonym is ``"P-"`` + 16 hex digits (64 bits; PatientID is LO, 64 characters);
- an item's (accession number's) pseudonym is ``"A-"`` + 14 hex digits: 16 characters, the most an
  AccessionNumber (SH) holds;
- a patient's jitter is a nonzero whole number of days in ``[-365, -1] ∪ [1, 365]``, sign and size both keyed;
  the patient's items take the patient's jitter.

The same key gives the same answers on every machine and after every restart; another key gives unrelated ones.
Without the key the pseudonyms cannot be recomputed from an identifier, which is why the key must be set (and
kept) for real use: with an empty key anyone could hash a list of MRNs and match them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Sequence

from dicom_relay.identifiers.models import (
    JITTER_MAX_DAYS,
    Entity,
    EntityResult,
    ItemResult,
    identity_key,
    validate_entities,
)

log = logging.getLogger(__name__)

PATIENT_PREFIX = "P-"
PATIENT_HEX_DIGITS = 16
ITEM_PREFIX = "A-"
ITEM_HEX_DIGITS = 14


class LocalProvider:
    name = "local"

    def __init__(self, secret_key: str):
        if not secret_key:
            # Without a key anyone can recompute every pseudonym and jitter from the identifiers.
            raise ValueError("the local provider needs a secret key (RELAY_SECRET_KEY)")
        self._key = secret_key.encode("utf-8")

    def __repr__(self) -> str:  # never show the key
        return "LocalProvider()"

    def _digest(self, domain: str, id_source: str, id: str) -> bytes:
        source, value = identity_key(id_source, id)
        message = "\x00".join((domain, source, value)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def patient_pseudonym(self, id_source: str, id: str) -> str:
        return PATIENT_PREFIX + self._digest("patient", id_source, id).hex()[:PATIENT_HEX_DIGITS]

    def item_pseudonym(self, id_source: str, id: str) -> str:
        return ITEM_PREFIX + self._digest("item", id_source, id).hex()[:ITEM_HEX_DIGITS]

    def jitter(self, id_source: str, id: str) -> int:
        n = int.from_bytes(self._digest("jitter", id_source, id)[:8], "big")
        days = (n >> 1) % JITTER_MAX_DAYS + 1  # 1..365; the 2**63 range makes the modulo bias negligible
        return days if n & 1 else -days

    def lookup(self, study_name: str, entities: Sequence[Entity]) -> list[EntityResult]:
        validate_entities(entities)
        results = []
        for entity in entities:
            jitter = self.jitter(entity.id_source, entity.id)
            items = (ItemResult.answer(item, self.item_pseudonym(item.id_source, item.id), jitter) for item in entity.items)
            results.append(EntityResult.answer(entity, self.patient_pseudonym(entity.id_source, entity.id), jitter, items))
        return results
