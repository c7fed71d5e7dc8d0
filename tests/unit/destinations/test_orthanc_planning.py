"""OrthancDestination without a server: presentation-context planning, reports, settings, secrecy."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000

from dicom_relay.config import ConfigError, Settings
from dicom_relay.destinations.orthanc import (
    MAX_PRESENTATION_CONTEXTS,
    InstanceOutcome,
    OrthancDestination,
    StoreReport,
    _read_meta,
    plan_associations,
    split_for_associations,
)
from tests.support.samples import generate_ct_study


def test_each_sop_class_and_transfer_syntax_pair_is_one_context_once():
    syntaxes = (ExplicitVRLittleEndian, JPEG2000, ImplicitVRLittleEndian)
    pairs = [(CTImageStorage, ExplicitVRLittleEndian)] * 3 + [(CTImageStorage, s) for s in syntaxes]

    (contexts,) = plan_associations(pairs)

    assert sorted(contexts) == sorted((CTImageStorage, s) for s in syntaxes)


def test_more_than_128_pairs_are_split_over_associations():
    pairs = [(f"1.2.840.10008.5.1.4.1.1.{i}", ExplicitVRLittleEndian) for i in range(300)]

    groups = plan_associations(pairs)

    assert [len(g) for g in groups] == [MAX_PRESENTATION_CONTEXTS, MAX_PRESENTATION_CONTEXTS, 44]
    assert sorted(p for g in groups for p in g) == sorted(pairs)


def test_no_files_no_association():
    assert plan_associations([]) == []


def test_meta_is_read_from_the_file_meta_group(tmp_path):
    sample = generate_ct_study(tmp_path / "s", n_instances=1, rows=8, columns=8)
    (path,) = sample.folder.glob("*.dcm")

    inst = _read_meta(path)

    assert (inst.sop_class_uid, inst.transfer_syntax_uid) == (CTImageStorage, ExplicitVRLittleEndian)


def test_report_counts_and_summary_name_files_by_basename_only():
    report = StoreReport(
        outcomes=[
            InstanceOutcome(Path("/w/deid/2.25.1.dcm"), stored=True, status=0x0000),
            InstanceOutcome(Path("/w/deid/2.25.2.dcm"), stored=True, status=0xB000, reason="Warning"),
            InstanceOutcome(Path("/w/deid/2.25.3.dcm"), stored=False, status=0xA700, reason="Failure"),
        ],
        elapsed_seconds=0.1234,
    )

    assert (report.stored_count, report.failed_count, report.ok) == (2, 1, False)
    assert report.failure_messages() == ["2.25.3.dcm: status 0xA700 (Failure)"]
    assert report.summary() == {
        "transport": "dicom",
        "stored": 2,
        "failed": 1,
        "elapsed_seconds": 0.123,
        "failures": ["2.25.3.dcm: status 0xA700 (Failure)"],
    }


def test_from_settings_and_the_password_stays_out_of_repr():
    settings = Settings(
        orthanc_host="10.0.0.5",
        orthanc_dicom_port=11112,
        orthanc_ae_title="PACS",
        calling_ae_title="RELAY",
        orthanc_url="http://10.0.0.5:8042/",
        orthanc_user="u",
        orthanc_password="s3cret",
    )

    dest = OrthancDestination.from_settings(settings)

    assert (dest.host, dest.dicom_port, dest.ae_title, dest.calling_ae_title) == ("10.0.0.5", 11112, "PACS", "RELAY")
    assert dest.url == "http://10.0.0.5:8042"
    assert "s3cret" not in repr(dest) and "s3cret" not in repr(dest._rest_store)
    # REST is the default transport, with 8 workers; both are settings.
    assert (dest.transport, dest._rest_store.workers) == ("rest", 8)
    assert dest._rest_store.url == "http://10.0.0.5:8042"
    dicom = OrthancDestination.from_settings(settings.with_overrides(orthanc_transport="dicom", orthanc_rest_workers=3))
    assert (dicom.transport, dicom._rest_store.workers) == ("dicom", 3)


def test_transport_settings_parse_and_refuse_clearly():
    assert Settings.from_env({}).orthanc_transport == "rest"
    assert Settings.from_env({"RELAY_ORTHANC_TRANSPORT": " DICOM "}).orthanc_transport == "dicom"
    assert Settings.from_env({"RELAY_ORTHANC_REST_WORKERS": "4"}).orthanc_rest_workers == 4
    with pytest.raises(ConfigError, match="RELAY_ORTHANC_TRANSPORT: Input should be 'rest' or 'dicom'"):
        Settings.from_env({"RELAY_ORTHANC_TRANSPORT": "http"})
    with pytest.raises(ConfigError, match="RELAY_ORTHANC_REST_WORKERS"):
        Settings.from_env({"RELAY_ORTHANC_REST_WORKERS": "0"})
    with pytest.raises(ValueError, match="rest, dicom"):
        OrthancDestination("h", 4242, "A", "B", "http://h:8042", "u", "p", transport="storescu")


@pytest.mark.parametrize("status", [None, 0x0122])
def test_outcome_description(status):
    text = InstanceOutcome(Path("x/2.25.9.dcm"), stored=False, status=status).describe()
    assert text.startswith("2.25.9.dcm: ") and "x/" not in text


def test_outcome_description_over_rest_names_the_http_status():
    outcome = InstanceOutcome(Path("x/2.25.9.dcm"), stored=False, http_status=400,
                              reason="refused by Orthanc: Bad file format")
    assert outcome.describe() == "2.25.9.dcm: HTTP 400 (refused by Orthanc: Bad file format)"


def test_instances_are_dealt_over_associations_only_when_there_are_enough():
    assert split_for_associations(list(range(10)), 4) == [list(range(10))]
    parts = split_for_associations(list(range(103)), 4)
    assert len(parts) == 4 and sorted(x for p in parts for x in p) == list(range(103))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert split_for_associations(list(range(60)), 4) == [list(range(0, 60, 2)), list(range(1, 60, 2))]
    assert split_for_associations([], 4) == []
