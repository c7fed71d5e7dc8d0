"""No planted marker survives at any depth: D on a sequence leaves no text behind, C keeps only clean values.

The deep corpus (corpus.deep_planted_dataset) holds a marker in every attribute of Table E.1-1 at depths 0 to 4,
and, in the items of every sequence of the table nested four deep, free text (CodeValue, CodingSchemeDesignator,
CodeMeaning, TextValue, UnformattedTextValue, PersonName), a standard code with a planted CodeMeaning and a
local code. The output's bytes are searched for every marker. Which markers may stay is computed from the
table's rows alone, not by the engine: those of attributes an enabled option keeps (K) or cleans (C), and the
free text of items of sequences that are kept (K, C, or U: the UIDs inside replaced, the rest walked with the
profile's rules, as in any kept sequence).
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest

from dicom_relay.deid import Deidentifier, DeidOptions, PatientIdentity, decide
from dicom_relay.deid.table import load_table

from .corpus import MARKER, STANDARD_CODE, deep_planted_dataset
from .test_profile import OPTION_SETS

ROWS = load_table()[1]


def _allowed(marker: str, options: DeidOptions) -> bool:
    """Whether the table (its rows, not the engine) lets ``marker`` stay under ``options``."""
    enabled = options.enabled_table_options()
    n = int(marker[3:7])
    row = ROWS[n - 9000] if n >= 9000 else ROWS[n]
    acts = {row.options[o] for o in enabled if o in row.options} or {row.basic}
    if acts & {"K", "C"}:
        return True
    if n >= 9000:
        if "U" in row.basic and not acts - {row.basic}:
            return marker[7] not in "H"  # a kept sequence: text the table does not name stays
        if marker[7] == "H":  # PerformedProcedureStepDescription: its own row
            own = next(r for r in ROWS if r.keyword == "PerformedProcedureStepDescription")
            return bool({own.options[o] for o in enabled if o in own.options} & {"K", "C"})
    return False


def _deidentify(tmp_path: Path, options: DeidOptions, name: str = "deep") -> tuple[Path, dict[str, str]]:
    ds, where = deep_planted_dataset()
    src = tmp_path / f"{name}.dcm"
    ds.save_as(src, enforce_file_format=True)
    accessions = {str(e.value): f"ACC-{i}" for i, e in enumerate(ds.iterall()) if e.tag == 0x00080050}
    identity = PatientIdentity("PSEUDO", -3, accessions)
    result = Deidentifier("k", options).deidentify_file(src, tmp_path / f"out-{name}", identity)
    assert result.path is not None
    return result.path, where


def _surviving(path: Path, where: dict[str, str]) -> set[str]:
    found = {m.decode() for m in re.findall(MARKER, path.read_bytes())}
    unknown = found - set(where)
    assert not unknown, f"markers the corpus did not register: {sorted(unknown)[:5]}"
    return found


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_no_marker_survives_at_any_depth(name: str, tmp_path: Path) -> None:
    options = OPTION_SETS[name]
    out, where = _deidentify(tmp_path, options)
    surviving = _surviving(out, where)
    wrong = sorted(m for m in surviving if not _allowed(m, options))
    assert not wrong, f"{len(wrong)} markers survive:\n" + "\n".join(f"{m}: {where[m]}" for m in wrong[:30])
    # Every depth was planted (the corpus is what it says).
    assert {w.split(" depth ")[1][0] for w in where.values()} == {"0", "1", "2", "3", "4"}


def test_d_sequences_keep_standard_concept_codes_and_dummy_the_rest(tmp_path: Path) -> None:
    out, _ = _deidentify(tmp_path, DeidOptions())
    ds = pydicom.dcmread(out)
    for keyword in ("ContentSequence", "GraphicAnnotationSequence", "FlowIdentifierSequence",
                    "PersonIdentificationCodeSequence", "VerifyingObserverSequence"):
        item, depth = ds[keyword][0], 1
        while True:
            where = f"{keyword} depth {depth}"
            assert item.CodeValue == item.CodingSchemeDesignator == item.CodeMeaning == "ANONYMIZED", where
            assert item.TextValue == item.UnformattedTextValue == "ANONYMIZED", where
            assert item.ValueType == "CODE", where  # coded strings are not free text
            concept = item.ConceptNameCodeSequence[0]
            assert (concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning) == STANDARD_CODE, where
            local = item.ConceptCodeSequence[0]
            assert (local.CodeValue, local.CodingSchemeDesignator, local.CodeMeaning) == ("ANONYMIZED",) * 3, where
            assert item.Date != "20010203" and len(item.Date) == 8, where  # shifted (Modified Dates)
            if keyword not in item:
                break
            item, depth = item[keyword][0], depth + 1
        assert depth == 4, keyword


def test_the_marker_test_finds_what_a_broken_engine_leaves(tmp_path: Path, monkeypatch) -> None:
    # A D-sequence that keeps free text (the engine before this rule) must fail the test above.
    monkeypatch.setattr(decide, "DUMMIED_VRS", frozenset())
    out, where = _deidentify(tmp_path, DeidOptions(), "broken")
    wrong = {m for m in _surviving(out, where) if not _allowed(m, DeidOptions())}
    assert len(wrong) > 100
    assert any("ContentSequence depth 4 CodeMeaning" == where[m] for m in wrong)
