"""The issue's conditions on real files: every DICOM file pydicom, pydicom-data and deid-data ship, plus dcmtk
transcodes (JPEG Lossless SV1, JPEG-LS, RLE, each also with trailing padding), through ``dicom-relay deidentify``.

One run of the corpus (tests/support/dicom_corpus.py, about 300 files, each alone in a folder and all together in
one) feeds every test below; each test names the files that break its condition and why. Needs dcmtk and
dciodvfy (installed by scripts/setup.sh), no service.
"""

import json
import os
from pathlib import Path

import pytest

from tests.support.dicom_corpus import (ASSERTIONS, CODECS, TRANSCODE_SOURCES, failures_text, identifying_values,
                                        run_corpus, scan_output, shipped_files)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("corpus")
    result = run_corpus(work, workers=2)
    # CORPUS_RESULT=FILE keeps the per-file JSON (e.g. for scripts/corpus_report.py --from FILE).
    out = Path(os.environ.get("CORPUS_RESULT") or work / "corpus.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"corpus result: {out} ({result['seconds']} s)")
    return result


def _failing(corpus, assertion: str) -> str:
    hits = [r for r in corpus["files"] if assertion in r["failures"]]
    lines = [f"{r['name']} [{r['source']}]: {r['failures'][assertion][:400]}" for r in hits]
    together = (corpus["together"] or {}).get("failures", {})
    if assertion in together:
        lines.append(f"(all files in one folder): {together[assertion][:800]}")
    return f"{ASSERTIONS[assertion]}: {len(lines)}\n" + "\n".join(lines)


def test_the_corpus_holds_every_shipped_file_and_the_transcodes(corpus):
    shipped = shipped_files()
    assert len(shipped) >= 240, "pydicom-data or deid-data is not installed (requirements-test.txt)"
    names = {(r["source"], r["name"]) for r in corpus["files"]}
    assert {(f.source, f.name) for f in shipped} <= names
    transcoded = [r for r in corpus["files"] if r["source"] == "dcmtk transcode"]
    assert len(transcoded) == len(TRANSCODE_SOURCES) * len(CODECS) * 2
    # The padding the builder appends is valid DICOM: dciodvfy finds no more errors than in the unpadded transcode.
    by_name = {r["name"]: r for r in transcoded}
    for r in transcoded:
        if r["transcode"].endswith("+padding"):
            plain = by_name[r["name"].replace("+padding]", "]")]
            assert r["pydicom"]["valid"] == plain["pydicom"]["valid"], r["name"]
            assert r["iod_errors_before"] == plain["iod_errors_before"], r["name"]
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        assert ("pydicom", name) in names
    assert all(r["outcome"] in ("delivered", "held_back", "rejected", "duplicate", "leak", "error")
               for r in corpus["files"])


def _fails(corpus, assertion: str) -> bool:
    together = (corpus["together"] or {}).get("failures", {})
    return any(assertion in r["failures"] for r in corpus["files"]) or assertion in together


def test_the_harness_ran_on_every_file(corpus):
    assert not _fails(corpus, "harness_error"), _failing(corpus, "harness_error")


def test_no_valid_instance_is_rejected(corpus):
    assert not _fails(corpus, "valid_rejected"), _failing(corpus, "valid_rejected")


def test_files_pydicom_cannot_read_as_an_instance_are_rejected_with_a_reason(corpus):
    invalid = [r for r in corpus["files"] if r["pydicom"]["valid"] is False]
    assert len(invalid) >= 30  # JSON, ICC profiles, DICOMDIRs, truncated files...: the check has something to check
    assert not _fails(corpus, "invalid_not_rejected"), _failing(corpus, "invalid_not_rejected")


def test_held_back_files_say_why(corpus):
    silent = [r["name"] for r in corpus["files"] if r["outcome"] in ("held_back", "rejected") and not r["reason"]]
    assert not silent, f"held back or rejected without a reason: {silent}"


def test_no_new_iod_error_on_a_delivered_file(corpus):
    delivered = [r for r in corpus["files"] if r["outcome"] == "delivered"]
    assert len(delivered) >= 100
    assert all(r["iod_errors_after"] is not None for r in delivered)
    assert not _fails(corpus, "new_iod_errors"), _failing(corpus, "new_iod_errors")


def test_no_false_leak(corpus):
    assert not _fails(corpus, "false_leak"), _failing(corpus, "false_leak")


def test_no_original_identifying_value_left(corpus):
    assert not _fails(corpus, "value_left"), _failing(corpus, "value_left")


def test_the_command_line_never_fails(corpus):
    assert not _fails(corpus, "cli_error"), _failing(corpus, "cli_error")


def test_the_independent_scan_finds_what_a_broken_engine_would_leave(corpus):
    """The scan behind test_no_original_identifying_value_left can fail: an original read as its own output leaks."""
    r = next(r for r in corpus["files"] if r["name"] == "CT_small.dcm")
    values = identifying_values(r["path"])
    assert {"PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"} <= set(values.values())
    assert {"PatientName", "PatientID", "StudyInstanceUID"} <= set(scan_output(values, r["path"]))


def test_the_summary_lists_the_failures(corpus):
    print(failures_text(corpus))
    assert corpus["counts"]["files"] == len(corpus["files"])


def test_the_scan_finds_short_values_in_the_header_and_long_ones_in_the_pixels(tmp_path):
    """A 4-character value is chance inside pixel bytes but a leak anywhere in the header; a long one counts in both."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = bytearray(ds.PixelData)
    pixels[100:104] = b"abcd"
    pixels[200:216] = b"LONGNAME-MRN-777"
    ds.PixelData = bytes(pixels)
    clean = tmp_path / "pixels-only.dcm"
    ds.save_as(clean)
    assert scan_output({"abcd": "PatientName", "LONGNAME-MRN-777": "PatientID"}, str(clean)) == ["PatientID"]
    ds.StudyDescription = "abcd"
    leaked = tmp_path / "header.dcm"
    ds.save_as(leaked)
    assert scan_output({"abcd": "PatientName"}, str(leaked)) == ["PatientName"]
