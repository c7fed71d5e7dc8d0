#!/usr/bin/env python
"""Build ``include/dicom_relay/deid/data/safe_private.json``: PS3.15 Table E.3.10-1 Safe Private Attributes.

With the Retain Safe Private Option (PS3.15 E.3.10) the relay keeps the private attributes this table lists,
with the Private Creator that reserves their block, and removes every other private attribute.

The source is the text of PS3.15 section E.3.10 as carried by the PyPI package ``dicom-standard`` (innolitics,
MIT licence), file ``standard/references.json`` (the HTML of the sections the standard's tables refer to, taken
from dicom.nema.org when the package was built). The script parses Table E.3.10-1 out of that HTML: Data Element
``(gggg,xxee)``, Private Creator, VR, VM and the standard's meaning/notes per row. dicom-standard is needed only
to run this script (requirements-build.txt)::

    .venv/bin/python -m pip install -r requirements-build.txt
    .venv/bin/python scripts/build_safe_private.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import sys
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "include" / "dicom_relay" / "deid" / "data" / "safe_private.json"
PACKAGE = "dicom-standard"
SECTION = "part15/sect_E.3.10.html#sect_E.3.10"
TABLE_TITLE = "Table E.3.10-1"
HEADER = ["Data Element", "Private Creator", "VR", "VM", "Meaning"]
TAG_RE = re.compile(r"^\(([0-9A-F]{4}),XX([0-9A-F]{2})\)$")


class _Tables(HTMLParser):
    """Rows of cell texts of every <table> in a fragment of the standard's HTML, with the text before each."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._text: list[str] = []  # text seen outside tables (the caption precedes its table)
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._rows:
            self._rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._rows is not None:
            self.tables.append((" ".join("".join(self._text).split()), self._rows))
            self._rows, self._text = None, []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._rows is None:
            self._text.append(data)


def _source() -> tuple[str, bytes, str]:
    """(package version, references.json bytes, its path inside the distribution)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        sys.exit(f"{PACKAGE} is not installed: .venv/bin/python -m pip install -r requirements-build.txt")
    for f in dist.files or ():
        if f.name == "references.json" and "standard" in f.parts:
            return dist.version, Path(dist.locate_file(f)).read_bytes(), str(f)
    sys.exit(f"{PACKAGE} {dist.version} ships no standard/references.json")


def parse_rows(html: str) -> list[dict]:
    parser = _Tables()
    parser.feed(html)
    found = [rows for caption, rows in parser.tables if TABLE_TITLE in caption]
    if len(found) != 1:
        sys.exit(f"expected one {TABLE_TITLE} in section E.3.10, found {len(found)}")
    header, *body = found[0]
    if header != HEADER:
        sys.exit(f"unexpected columns of {TABLE_TITLE}: {header}")
    rows = []
    for cells in body:
        tag, creator, vr, vm, meaning = cells
        m = TAG_RE.match(tag.upper())
        if m is None or int(m.group(1), 16) % 2 == 0:
            sys.exit(f"not a private data element of the form (gggg,xxee): {tag!r}")
        rows.append(
            {
                "tag": f"({m.group(1)},xx{m.group(2)})",
                "creator": creator,
                "group": m.group(1),
                "element": m.group(2),
                "vr": vr,
                "vm": vm,
                "meaning": meaning,
            }
        )
    return rows


def build() -> dict:
    version, raw, where = _source()
    refs = json.loads(raw)
    keys = [k for k in refs if k.endswith(SECTION)]
    if len(keys) != 1:
        sys.exit(f"section E.3.10 not found once in {where}")
    rows = parse_rows(refs[keys[0]])
    keys_seen = {(r["creator"].upper(), r["group"], r["element"]) for r in rows}
    return {
        "provenance": {
            "standard": "DICOM PS3.15 Annex E, section E.3.10 Retain Safe Private Option, "
            "Table E.3.10-1 Safe Private Attributes",
            "edition": "the edition current when dicom-standard 0.1.0 was built (April 2020, 2020b); "
            "the table is a sample list the standard keeps (vendors do not guarantee the attributes safe)",
            "source": f"{PACKAGE} {version} (PyPI, innolitics, MIT licence), file {where}, "
            f"the HTML of section {keys[0]}",
            "source_sha256": hashlib.sha256(raw).hexdigest(),
            "generated_by": "scripts/build_safe_private.py",
            "built": dt.date.today().isoformat(),
            "row_count": len(rows),
            "distinct_key_count": len(keys_seen),
            "columns": {
                "tag": "(gggg,xxee) as in the standard: gggg the odd group, ee the element within the private block",
                "creator": "Private Creator (the value of (gggg,00xx) that reserves the block)",
                "group": "gggg, hexadecimal",
                "element": "ee, hexadecimal (the low byte of the element number)",
                "vr": "VR as listed by the standard",
                "vm": "VM as listed by the standard",
                "meaning": "the standard's description and notes for the attribute",
            },
        },
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    doc = build()
    lines = ["{", f'"provenance": {json.dumps(doc["provenance"], indent=1)},', '"rows": [']
    rows = doc["rows"]
    lines += [f" {json.dumps(r)}{',' if i < len(rows) - 1 else ''}" for i, r in enumerate(rows)]
    lines += ["]", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    args.out.write_text(text)
    print(f"{args.out}: {len(rows)} rows, {doc['provenance']['distinct_key_count']} distinct (creator, group, element)")


if __name__ == "__main__":
    main()
