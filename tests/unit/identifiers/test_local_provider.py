"""LocalProvider: keyed, deterministic pseudonyms and jitter."""

import datetime as dt
import re

import pytest

from dicom_relay.config import Settings
from dicom_relay.errors import PermanentError
from dicom_relay.identifiers import (
    JITTER_MAX_DAYS,
    Entity,
    IdentifierError,
    IdentifierProvider,
    Item,
    LocalProvider,
    RestProvider,
    provider_from_settings,
)

KEY = "a-test-key-that-is-long-enough-0123456789"


def patient(i: int, birth: str | None = "1961-07-14", n_items: int = 2) -> Entity:
    return Entity(
        id=f"MRN{i:07d}",
        id_source="Stanford MRN",
        id_timestamp=birth,
        items=tuple(Item(f"ACC{i:05d}{j}", "DCM Accession #", "2021-03-0%d" % (j + 1)) for j in range(n_items)),
    )


def test_same_key_same_answers_across_instances_and_calls():
    entities = [patient(i) for i in range(5)]
    first = LocalProvider(KEY).lookup("20260101T000000-aaaaaa", entities)
    second = LocalProvider(KEY).lookup("20260102T000000-bbbbbb", list(reversed(entities)))
    assert first == list(reversed(second))  # the study name does not change a patient's answer
    assert len({r.suid for r in first}) == 5


def test_different_keys_give_unrelated_pseudonyms_and_jitter():
    entities = [patient(i) for i in range(50)]
    a = LocalProvider(KEY).lookup("b", entities)
    b = LocalProvider(KEY + "x").lookup("b", entities)
    assert all(x.suid != y.suid for x, y in zip(a, b))
    assert all(x.items[0].suid != y.items[0].suid for x, y in zip(a, b))
    assert [x.jitter for x in a] != [y.jitter for y in b]


def test_pseudonym_shapes_fit_dicom_and_hide_the_identifier():
    result = LocalProvider(KEY).lookup("b", [patient(1)])[0]
    assert re.fullmatch(r"P-[0-9a-f]{16}", result.suid)
    for item in result.items:
        assert re.fullmatch(r"A-[0-9a-f]{14}", item.suid)
        assert len(item.suid) <= 16  # AccessionNumber is SH
    assert "MRN0000001" not in result.suid


def test_jitter_is_nonzero_within_range_and_uses_both_signs():
    provider = LocalProvider(KEY)
    jitters = [r.jitter for r in provider.lookup("b", [patient(i, n_items=0) for i in range(3000)])]
    assert all(isinstance(j, int) and j != 0 and -JITTER_MAX_DAYS <= j <= JITTER_MAX_DAYS for j in jitters)
    assert min(jitters) < -300 and max(jitters) > 300  # spread over the range, not clustered
    assert sum(j > 0 for j in jitters) / len(jitters) == pytest.approx(0.5, abs=0.05)


def test_jittered_timestamps_shift_by_the_patients_jitter_and_items_share_it():
    result = LocalProvider(KEY).lookup("b", [patient(7, birth="2000-02-29")])[0]
    expected_birth = dt.date(2000, 2, 29) + dt.timedelta(days=result.jitter)
    assert result.jittered_timestamp == expected_birth.isoformat()
    for j, item in enumerate(result.items):
        assert item.jitter == result.jitter
        assert item.jittered_timestamp == (dt.date(2021, 3, j + 1) + dt.timedelta(days=result.jitter)).isoformat()


def test_no_timestamp_gives_no_jittered_timestamp():
    entity = Entity("MRN1", "MRN", None, (Item("ACC1", "DCM Accession #", None),))
    result = LocalProvider(KEY).lookup("b", [entity])[0]
    assert result.jittered_timestamp is None and result.items[0].jittered_timestamp is None
    assert result.jitter != 0


def test_item_pseudonyms_are_keyed_by_the_item_alone():
    provider = LocalProvider(KEY)
    one = provider.lookup("b", [Entity("MRN1", "MRN", None, (Item("ACC1", "DCM Accession #"),))])[0]
    again = provider.lookup("c", [Entity("MRN1", "MRN", None, (Item("ACC1", "DCM Accession #"), Item("ACC2", "DCM Accession #")))])[0]
    assert again.items[0].suid == one.items[0].suid
    assert again.items[1].suid != one.items[0].suid
    # The same value from another source is another identifier.
    other = provider.lookup("b", [Entity("MRN1", "Other MRN")])[0]
    assert other.suid != one.suid


def test_padding_around_an_identifier_does_not_make_a_new_patient():
    provider = LocalProvider(KEY)
    assert provider.lookup("b", [Entity("MRN1 ", "MRN")])[0].suid == provider.lookup("b", [Entity("MRN1", "MRN")])[0].suid


def test_results_echo_the_request_in_order():
    entities = [patient(i) for i in range(3)]
    results = LocalProvider(KEY).lookup("b", entities)
    assert [(r.id, r.id_source) for r in results] == [(e.id, e.id_source) for e in entities]
    assert [[i.id for i in r.items] for r in results] == [[i.id for i in e.items] for e in entities]


@pytest.mark.parametrize(
    "entity, where",
    [
        (Entity("", "MRN"), "entity #2"),
        (Entity("MRN9", ""), "entity #2"),
        (Entity("MRN9", "MRN", "19610714"), "entity #2"),  # DICOM DA, not ISO
        (Entity("MRN9", "MRN", "1961-02-30"), "entity #2"),
        (Entity("MRN9", "MRN", None, (Item("ACC9", "DCM Accession #", "2021/03/01"),)), "entity #2, item #1"),
    ],
)
def test_bad_requests_are_refused_by_position_without_the_value(entity, where):
    with pytest.raises(IdentifierError) as info:
        LocalProvider(KEY).lookup("b", [patient(1), entity])
    message = str(info.value)
    assert where in message
    for secret in ("MRN9", "ACC9", "19610714", "1961-02-30", "2021/03/01"):
        assert secret not in message
    assert isinstance(info.value, PermanentError)


def test_repr_shows_pseudonyms_never_identifiers_or_dates():
    entity = patient(3, birth="1961-07-14")
    result = LocalProvider(KEY).lookup("b", [entity])[0]
    for text in (repr(entity), repr(result), repr(LocalProvider(KEY))):
        assert "MRN0000003" not in text and "ACC00003" not in text and "1961" not in text and KEY not in text
    assert result.suid in repr(result)


def test_results_are_frozen():
    result = LocalProvider(KEY).lookup("b", [patient(1)])[0]
    with pytest.raises(AttributeError):
        result.suid = "P-other"


def test_provider_from_settings_picks_local_without_url_and_rest_with_one():
    local = provider_from_settings(Settings(secret_key=KEY))
    assert isinstance(local, LocalProvider) and local.name == "local"
    assert local.lookup("b", [patient(1)]) == LocalProvider(KEY).lookup("b", [patient(1)])

    rest = provider_from_settings(
        Settings(identifier_url="http://ids.example:8000/", identifier_token="tok", identifier_timeout=2.5, identifier_retries=5)
    )
    assert isinstance(rest, RestProvider) and rest.name == "rest"
    assert (rest.base_url, rest.timeout, rest.retries) == ("http://ids.example:8000", 2.5, 5)
    assert "tok" not in repr(rest)
    assert isinstance(local, IdentifierProvider) and isinstance(rest, IdentifierProvider)
