#!/usr/bin/env python
"""Build dicom-relay's de-identification table from PS3.15 Table E.1-1.

The input is a machine-readable transcription of the standard's table (by default the innolitics
``dicom-standard`` extraction, MIT licensed, one object per row). The output,
``include/dicom_relay/deid/data/ps315_table_e1_1.json``, is the project's own format: one row per attribute
with the pydicom keyword and VR, the basic profile action, and one column per profile option, plus a
``provenance`` block (edition, source, source checksum) so a reviewer can trace every row back to the
standard. Run it again when a new edition is published:

    python scripts/build_deid_table.py --source ../shared/standards/ps315_table_e1_1.json --edition 2024b

It also writes the reference copy the unit tests check the shipped table against
(``tests/reference/ps315_table_e1_1.tsv``): the source's rows as they are (tag, name, the standard's column
values), tab-separated, headed by the source, its checksum and licence, so a clone with nothing beside it runs the
check. The source JSON itself is not committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

from pydicom.datadict import dictionary_keyword, dictionary_VR

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT / ".." / "shared" / "standards" / "ps315_table_e1_1.json"
DEFAULT_OUT = ROOT / "include" / "dicom_relay" / "deid" / "data" / "ps315_table_e1_1.json"
DEFAULT_REFERENCE = ROOT / "tests" / "reference" / "ps315_table_e1_1.tsv"

# Source column -> our option name (the names DeidOptions and docs/DEIDENTIFICATION.md use).
OPTION_COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_full_dates",
    "rtnLongModifDatesOpt": "retain_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
REFERENCE_COLUMNS = ("tag", "name", "stdCompIOD", "basicProfile", *OPTION_COLUMNS)
ACTIONS = {"X", "Z", "D", "U", "K", "C", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
TAG_RE = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")


def convert_row(row: dict) -> dict:
    tag = row["tag"].upper()
    m = TAG_RE.match(tag)
    if m is None:
        if "GGGG" in tag and "ODD" in tag:
            out = {"tag": "(GGGG,EEEE)", "pattern": "private", "keyword": "", "vr": ""}
        else:
            raise SystemExit(f"unexpected tag form in source table: {row['tag']!r}")
    else:
        group, elem = m.groups()
        pattern = "repeating" if "X" in group + elem else "exact"
        keyword, vr = "", ""
        if pattern == "exact":
            value = int(group + elem, 16)
            try:
                keyword, vr = dictionary_keyword(value), dictionary_VR(value)
            except KeyError:
                pass  # an attribute newer than this pydicom: matched by tag alone
        else:
            probe = int(group.replace("X", "0") + elem.replace("X", "0"), 16)
            try:
                keyword, vr = dictionary_keyword(probe), dictionary_VR(probe)
            except KeyError:
                pass
        out = {"tag": f"({group},{elem})", "pattern": pattern, "keyword": keyword, "vr": vr}
    basic = row["basicProfile"]
    if basic not in ACTIONS:
        raise SystemExit(f"unknown action {basic!r} for {row['tag']}")
    out["name"] = row["name"]
    out["in_std_iod"] = row["stdCompIOD"] == "Y"
    out["basic"] = basic
    for src, ours in OPTION_COLUMNS.items():
        if row.get(src):
            if row[src] not in ACTIONS:
                raise SystemExit(f"unknown option action {row[src]!r} for {row['tag']}")
            out[ours] = row[src]
    return out


def write_reference(source_rows: list[dict], raw: bytes, edition: str, out: Path) -> None:
    """The source's rows, unchanged in content, as a TSV with a provenance header (for the unit tests)."""
    lines = [
        f"# DICOM PS3.15 Table E.1-1, edition {edition}: the reference copy tests/unit/deid/test_table_verify_io.py",
        "# checks the shipped table (include/dicom_relay/deid/data/ps315_table_e1_1.json) against.",
        "# Source: innolitics/dicom-standard standard/confidentiality_profile_attributes.json (commit 7f4749d),",
        f"# sha256 {hashlib.sha256(raw).hexdigest()}, a machine-readable extraction of the DICOM standard;",
        "# MIT licence, Copyright (c) 2017 Innolitics, LLC: see LICENSE-innolitics-dicom-standard.txt beside this file.",
        "# Written by scripts/build_deid_table.py; one row per table row, the source's values as they are (runs of",
        "# white space in a name written as one space).",
        "\t".join(REFERENCE_COLUMNS),
    ]
    for row in source_rows:
        lines.append("\t".join(" ".join(str(row.get(c, "")).split()) for c in REFERENCE_COLUMNS))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--edition", default="2024b")
    ap.add_argument("--reference-out", type=Path, default=DEFAULT_REFERENCE)
    args = ap.parse_args(argv)
    raw = args.source.read_bytes()
    source_rows = json.loads(raw)
    write_reference(source_rows, raw, args.edition, args.reference_out)
    rows = [convert_row(r) for r in source_rows]
    rows.sort(key=lambda r: (r["pattern"] != "exact", r["tag"]))
    table = {
        "provenance": {
            "standard": "DICOM PS3.15 Annex E, Table E.1-1 Application Level Confidentiality Profile Attributes",
            "edition": args.edition,
            "source": "innolitics/dicom-standard standard/confidentiality_profile_attributes.json (MIT licence), "
            "a machine-readable extraction of the DICOM standard",
            "source_sha256": hashlib.sha256(raw).hexdigest(),
            "generated_by": "scripts/build_deid_table.py",
            "row_count": len(rows),
            "columns": {
                "tag": "(GGGG,EEEE); 'X' digits are repeating groups (50xx curves, 60xx overlays)",
                "pattern": "exact | repeating | private",
                "keyword": "pydicom keyword ('' if unknown to pydicom)",
                "vr": "VR from pydicom's data dictionary",
                "name": "attribute name as in the standard",
                "in_std_iod": "the attribute is used in a standard composite IOD",
                "basic": "Basic Profile action (X, Z, D, U, K, C and compounds X/Z, X/D, Z/D, X/Z/D, X/Z/U*)",
                **{v: f"action of the option (source column {k})" for k, v in OPTION_COLUMNS.items()},
            },
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
