"""The identifier contract: what is asked for, what comes back, and its JSON form on the wire.

The wire format is the DASHER-style one sendit used (see ``LINEAGE.md``)::

    POST <base>/uid/<study_name>
    {"identifiers": [{"id", "id_source", "id_timestamp", "items": [{"id", "id_source", "id_timestamp"}]}]}
    -> {"results": [{"id", "id_source", "suid", "jitter", "jittered_timestamp",
                     "items": [{"id", "id_source", "suid", "jitter", "jittered_timestamp"}]}]}

An *entity* is a patient, an *item* one of its studies (accession number). ``suid`` is the pseudonym and
``jitter`` the patient's day offset; items carry their patient's jitter. ``jittered_timestamp`` is the
``id_timestamp`` (ISO date ``YYYY-MM-DD``) shifted by ``jitter`` days, ``None`` when there is no timestamp.

Every error raised here names entities and items by their position (``entity #2, item #1``, counted from 1),
never by their identifier or dates: messages go to logs, the status table and the UI.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

from dicom_relay.errors import PermanentError, TransientError

#: Jitter is a nonzero whole number of days in [-JITTER_MAX_DAYS, -1] or [1, JITTER_MAX_DAYS].
JITTER_MAX_DAYS = 365
#: A pseudonym becomes PatientID (VR LO, at most 64 characters) and must not carry DICOM's value separator.
SUID_MAX_LENGTH = 64
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BAD_SUID_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")


class IdentifierError(PermanentError):
    """The identifier lookup cannot succeed without a person (bad answer, refused token, bad request)."""


class IdentifierUnavailable(TransientError):
    """The identifier service could not be reached or kept failing (timeouts, refused, HTTP 5xx)."""


def _hidden(**kw):
    # Identifiers and real dates stay out of repr(): a logged or printed result shows pseudonyms only.
    return field(repr=False, **kw)


@dataclass(frozen=True)
class Item:
    id: str = _hidden()
    id_source: str
    id_timestamp: str | None = _hidden(default=None)


@dataclass(frozen=True)
class Entity:
    id: str = _hidden()
    id_source: str
    id_timestamp: str | None = _hidden(default=None)
    items: tuple[Item, ...] = ()

    def __post_init__(self):
        # Accept any sequence of items but keep the dataclass hashable and immutable.
        object.__setattr__(self, "items", tuple(self.items))


@dataclass(frozen=True)
class _Result:
    """The service's answer for one identifier: its pseudonym (``suid``), jitter and moved date."""

    id: str = _hidden()
    id_source: str
    suid: str
    jitter: int
    jittered_timestamp: str | None = _hidden()


@dataclass(frozen=True)
class ItemResult(_Result):
    @classmethod
    def answer(cls, item: "Item", suid: str, jitter: int) -> "ItemResult":
        """The answer for ``item``: its pseudonym, and its date moved by its patient's jitter."""
        return cls(id=item.id, id_source=item.id_source, suid=suid, jitter=jitter,
                   jittered_timestamp=shift_date(item.id_timestamp, jitter))


@dataclass(frozen=True)
class EntityResult(_Result):
    items: tuple[ItemResult, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "items", tuple(self.items))

    @classmethod
    def answer(cls, entity: "Entity", suid: str, jitter: int, items: Iterable[ItemResult]) -> "EntityResult":
        """The answer for ``entity``: its pseudonym and jitter, its date moved, its items' answers."""
        return cls(id=entity.id, id_source=entity.id_source, suid=suid, jitter=jitter,
                   jittered_timestamp=shift_date(entity.id_timestamp, jitter), items=tuple(items))


# --------------------------------------------------------------------------------------------------- dates


def is_iso_date(value: object) -> bool:
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def shift_date(iso_date: str | None, days: int) -> str | None:
    """``iso_date`` (``YYYY-MM-DD``) moved by ``days``; ``None`` stays ``None``."""
    if iso_date is None:
        return None
    try:
        return (dt.date.fromisoformat(iso_date) + dt.timedelta(days=days)).isoformat()
    except OverflowError:
        raise IdentifierError("a date shifted by the jitter falls outside years 1-9999") from None


def identity_key(id_source: str, id: str) -> tuple[str, str]:
    """What makes two identifiers the same one: source and value, without the padding DICOM allows around them."""
    return (id_source.strip(), id.strip())


# ------------------------------------------------------------------------------------------------ requests


def _where(entity_index: int, item_index: int | None = None) -> str:
    where = f"entity #{entity_index + 1}"
    return where if item_index is None else f"{where}, item #{item_index + 1}"


def validate_entities(entities: Sequence[Entity]) -> None:
    """Refuse a request the contract cannot answer: empty ids or sources, timestamps that are not ISO dates."""
    for i, entity in enumerate(entities):
        _validate_one(entity, i, None)
        for j, item in enumerate(entity.items):
            _validate_one(item, i, j)


def _validate_one(thing: Entity | Item, i: int, j: int | None) -> None:
    where = _where(i, j)
    if not isinstance(thing.id, str) or not thing.id.strip():
        raise IdentifierError(f"{where}: the identifier is empty")
    if not isinstance(thing.id_source, str) or not thing.id_source.strip():
        raise IdentifierError(f"{where}: id_source is empty")
    if thing.id_timestamp is not None and not is_iso_date(thing.id_timestamp):
        raise IdentifierError(f"{where}: id_timestamp is not an ISO date (YYYY-MM-DD)")


def _wire(record: Entity | Item | EntityResult | ItemResult) -> dict[str, Any]:
    """A contract record as its JSON object: its fields in order, ``items`` as a list of objects."""
    body = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "items"}
    if isinstance(record, (Entity, EntityResult)):
        body["items"] = [_wire(item) for item in record.items]
    return body


def request_body(entities: Sequence[Entity]) -> dict[str, Any]:
    """The JSON body of ``POST <base>/uid/<study_name>``."""
    return {"identifiers": [_wire(e) for e in entities]}


def entities_from_request(body: object) -> list[Entity]:
    """Parse and validate a request body (the service side); ``IdentifierError`` names the bad position."""
    if not isinstance(body, Mapping) or not isinstance(body.get("identifiers"), list):
        raise IdentifierError('the request body must be an object with an "identifiers" list')
    entities = []
    for i, raw in enumerate(body["identifiers"]):
        if not isinstance(raw, Mapping):
            raise IdentifierError(f"{_where(i)}: not an object")
        raw_items = raw.get("items", [])
        if not isinstance(raw_items, list) or not all(isinstance(x, Mapping) for x in raw_items):
            raise IdentifierError(f'{_where(i)}: "items" must be a list of objects')
        entities.append(
            Entity(
                id=raw.get("id"),
                id_source=raw.get("id_source"),
                id_timestamp=raw.get("id_timestamp"),
                items=tuple(
                    Item(id=x.get("id"), id_source=x.get("id_source"), id_timestamp=x.get("id_timestamp"))
                    for x in raw_items
                ),
            )
        )
    validate_entities(entities)
    return entities


# ------------------------------------------------------------------------------------------------- answers


def results_body(results: Iterable[EntityResult]) -> dict[str, Any]:
    """The JSON body of the answer."""
    return {"results": [_wire(r) for r in results]}


def _check_suid(value: object, original_id: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise IdentifierError(f"the identifier service answered without a pseudonym for {where}")
    if len(value) > SUID_MAX_LENGTH or _BAD_SUID_CHARS.search(value):
        raise IdentifierError(
            f"the identifier service answered an unusable pseudonym for {where} "
            f"(longer than {SUID_MAX_LENGTH} characters, or a backslash or control character)"
        )
    if value.strip() == original_id.strip():
        raise IdentifierError(f"the identifier service answered the identifier itself as the pseudonym of {where}")
    return value


def _check_jitter(value: object, where: str) -> int:
    # bool is an int subclass; a JSON true is not a day count.
    if type(value) is not int:
        raise IdentifierError(f"the identifier service answered no whole-day jitter for {where}")
    return value


def _index(raw_list: object, what: str) -> dict[tuple[str, str], Mapping]:
    if not isinstance(raw_list, list):
        raise IdentifierError(f"the identifier service answer has no {what} list")
    index: dict[tuple[str, str], Mapping] = {}
    for raw in raw_list:
        if isinstance(raw, Mapping) and isinstance(raw.get("id_source"), str) and isinstance(raw.get("id"), str):
            index.setdefault(identity_key(raw["id_source"], raw["id"]), raw)
    return index


def results_from_answer(body: object, entities: Sequence[Entity]) -> list[EntityResult]:
    """Match an answer to the request and fail closed on anything missing.

    Every requested entity and item must come back (matched on ``(id_source, id)``) with a non-empty pseudonym
    and an integer jitter, an item's jitter equal to its patient's; answers for things that were not asked for are ignored. ``jittered_timestamp`` is
    recomputed from the request's ``id_timestamp`` and the returned jitter, so it always agrees with the shift
    that de-identification applies. Results come back in the order of ``entities``.
    """
    if not isinstance(body, Mapping):
        raise IdentifierError("the identifier service answer is not a JSON object")
    by_key = _index(body.get("results"), '"results"')
    results = []
    for i, entity in enumerate(entities):
        where = _where(i)
        raw = by_key.get(identity_key(entity.id_source, entity.id))
        if raw is None:
            raise IdentifierError(f"the identifier service answered nothing for {where}")
        suid = _check_suid(raw.get("suid"), entity.id, where)
        jitter = _check_jitter(raw.get("jitter"), where)
        items_by_key = _index(raw.get("items", []), f'"items" ({where})') if entity.items else {}
        items = []
        for j, item in enumerate(entity.items):
            where_item = _where(i, j)
            raw_item = items_by_key.get(identity_key(item.id_source, item.id))
            if raw_item is None:
                raise IdentifierError(f"the identifier service answered nothing for {where_item}")
            # Items take their patient's jitter: one date shift per patient, or the study's dates disagree.
            if _check_jitter(raw_item.get("jitter"), where_item) != jitter:
                raise IdentifierError(
                    f"the identifier service answered a jitter for {where_item} that differs from its patient's"
                )
            items.append(ItemResult.answer(item, _check_suid(raw_item.get("suid"), item.id, where_item), jitter))
        results.append(EntityResult.answer(entity, suid, jitter, items))
    return results
