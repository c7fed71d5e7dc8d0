"""The JSON form of the identifier contract (LINEAGE.md) and the fail-closed reading of answers."""

import copy
import json

import pytest

from dicom_relay.identifiers import (
    Entity,
    EntityResult,
    IdentifierError,
    Item,
    ItemResult,
    LocalProvider,
    entities_from_request,
    request_body,
    results_body,
    results_from_answer,
    shift_date,
)

ENTITIES = [
    Entity("12345678", "Stanford MRN", "1961-07-14", (Item("A1000", "DCM Accession #", "2021-03-01"), Item("A1001", "DCM Accession #", None))),
    Entity("87654321", "Stanford MRN", None, ()),
]


def good_answer() -> dict:
    return results_body(LocalProvider("k").lookup("b", ENTITIES))


def test_request_body_is_exactly_the_lineage_shape():
    assert request_body(ENTITIES) == {
        "identifiers": [
            {
                "id": "12345678",
                "id_source": "Stanford MRN",
                "id_timestamp": "1961-07-14",
                "items": [
                    {"id": "A1000", "id_source": "DCM Accession #", "id_timestamp": "2021-03-01"},
                    {"id": "A1001", "id_source": "DCM Accession #", "id_timestamp": None},
                ],
            },
            {"id": "87654321", "id_source": "Stanford MRN", "id_timestamp": None, "items": []},
        ]
    }


def test_request_round_trips_through_json():
    assert entities_from_request(json.loads(json.dumps(request_body(ENTITIES)))) == ENTITIES


def test_request_without_items_key_means_no_items():
    assert entities_from_request({"identifiers": [{"id": "1", "id_source": "MRN", "id_timestamp": None}]}) == [
        Entity("1", "MRN", None, ())
    ]


@pytest.mark.parametrize(
    "body, where",
    [
        ({}, "identifiers"),
        ({"identifiers": {"id": "1"}}, "identifiers"),
        ({"identifiers": ["1"]}, "entity #1"),
        ({"identifiers": [{"id": "1", "id_source": "MRN", "items": "A1"}]}, "entity #1"),
        ({"identifiers": [{"id": 12345, "id_source": "MRN"}]}, "entity #1"),
        ({"identifiers": [{"id": "1", "id_source": "MRN", "items": [{"id": "A1", "id_source": "x", "id_timestamp": "1.1.2020"}]}]}, "entity #1, item #1"),
    ],
)
def test_malformed_requests_are_refused(body, where):
    with pytest.raises(IdentifierError, match=where):
        entities_from_request(body)


def test_results_body_is_exactly_the_lineage_shape():
    result = EntityResult("1", "MRN", "P-1", -3, "2000-01-01", (ItemResult("A", "Acc", "A-1", -3, None),))
    assert results_body([result]) == {
        "results": [
            {
                "id": "1",
                "id_source": "MRN",
                "suid": "P-1",
                "jitter": -3,
                "jittered_timestamp": "2000-01-01",
                "items": [{"id": "A", "id_source": "Acc", "suid": "A-1", "jitter": -3, "jittered_timestamp": None}],
            }
        ]
    }


def test_answer_round_trips_and_keeps_request_order():
    expected = LocalProvider("k").lookup("b", ENTITIES)
    answer = json.loads(json.dumps(results_body(expected)))
    answer["results"].reverse()  # a service may answer in any order
    assert results_from_answer(answer, ENTITIES) == expected


def test_jittered_timestamp_is_recomputed_from_the_request_and_the_jitter():
    answer = good_answer()
    answer["results"][0]["jittered_timestamp"] = "1900-01-01"  # a service's own idea of the date is not trusted
    result = results_from_answer(answer, ENTITIES)[0]
    assert result.jittered_timestamp == shift_date("1961-07-14", result.jitter)


def test_answers_for_identifiers_not_asked_for_are_ignored():
    answer = good_answer()
    answer["results"].append({"id": "999", "id_source": "MRN", "suid": "P-x", "jitter": 1, "items": []})
    assert len(results_from_answer(answer, ENTITIES)) == 2


def _break(path, value):
    def mutate(answer):
        target = answer
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return answer

    return mutate


@pytest.mark.parametrize(
    "mutate, where",
    [
        (_break(("results", 0, "suid"), KeyError), "entity #1"),
        (_break(("results", 0, "suid"), ""), "entity #1"),
        (_break(("results", 0, "suid"), "   "), "entity #1"),
        (_break(("results", 0, "suid"), None), "entity #1"),
        (_break(("results", 0, "suid"), "12345678"), "entity #1"),  # the identifier echoed back
        (_break(("results", 0, "suid"), "P-" + "x" * 80), "entity #1"),
        (_break(("results", 0, "suid"), "P-1\\P-2"), "entity #1"),
        (_break(("results", 1, "jitter"), KeyError), "entity #2"),
        (_break(("results", 1, "jitter"), "5"), "entity #2"),
        (_break(("results", 1, "jitter"), 5.0), "entity #2"),
        (_break(("results", 1, "jitter"), True), "entity #2"),
        (_break(("results", 0, "items", 1, "suid"), ""), "entity #1, item #2"),
        (_break(("results", 0, "items", 1, "jitter"), None), "entity #1, item #2"),
        (_break(("results", 0, "items", 1, "jitter"), 400), "entity #1, item #2"),  # not the patient's jitter
        (_break(("results", 0, "items"), []), "entity #1, item #1"),
        (_break(("results", 0, "items"), KeyError), "entity #1, item #1"),
        (_break(("results", 0, "id"), "12345679"), "entity #1"),  # answers another patient
        (_break(("results", 1), "oops"), "entity #2"),
        (_break(("results",), {}), "results"),
        (_break(("results",), KeyError), "results"),
    ],
)
def test_incomplete_answers_fail_closed_naming_the_position_not_the_identifier(mutate, where):
    answer = mutate(copy.deepcopy(good_answer()))
    with pytest.raises(IdentifierError) as info:
        results_from_answer(answer, ENTITIES)
    message = str(info.value)
    assert where in message
    for identifier in ("12345678", "87654321", "A1000", "A1001", "1961"):
        assert identifier not in message


def test_answer_that_is_not_an_object_fails_closed():
    with pytest.raises(IdentifierError):
        results_from_answer([], ENTITIES)


def test_shift_date_handles_leap_days_and_refuses_overflow():
    assert shift_date("2024-02-28", 1) == "2024-02-29"
    assert shift_date("2024-03-01", -366) == "2023-03-01"
    assert shift_date(None, 12) is None
    with pytest.raises(IdentifierError, match="outside years"):
        shift_date("0001-01-02", -5)
