#!/usr/bin/env python
"""Build ``include/dicom_relay/deid/data/iod_types.json``: the Type of each compound-action attribute per IOD.

PS3.15 Table E.1-1 gives some attributes a compound action (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) whose branch depends on
whether the instance's IOD requires the attribute (PS3.15 E.1.1). ``dicom_relay.deid.table.resolve_compound``
decides from this file. It is derived from highdicom's copy of the standard's IOD and module tables (PS3.3,
extracted by innolitics/dicom-standard): SOP Class UID -> IOD, IOD -> modules with their usage (M, C, U),
module -> attributes with their Type (1, 1C, 2, 2C, 3) and sequence path.

highdicom is needed only to run this script (it is not a dependency of the relay)::

    .venv/bin/pip install highdicom==0.28.2
    .venv/bin/python scripts/build_iod_types.py
    .venv/bin/pip uninstall -y highdicom pyjpegls

For every IOD, each attribute that has a compound action in our shipped Table E.1-1
(``deid/data/ps315_table_e1_1.json``, any column) and occurs at the top level of one of the IOD's modules gets
``"<Type>@<usage>"``: the strongest Type it has across the IOD's modules (1 > 1C > 2 > 2C > 3) and the usage
of the module that type comes from (M before C before U on a tie). The module usage does not weaken the Type:
whether a conditional (C) or user-optional (U) module is present is a property of the instance, not of the SOP
class, and when the module is present its Type 1 and 2 attributes are required, so the file stays valid only if
they are kept (see docs/DEIDENTIFICATION.md, "Compound actions"). A type highdicom leaves empty (normalized
IODs) is written as ``?`` (unknown). Attributes inside sequences are not listed (their type belongs to the
sequence's macro, not to the IOD); the engine resolves them with the safe fallback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "include" / "dicom_relay" / "deid" / "data"
TABLE = DATA / "ps315_table_e1_1.json"
OUT = DATA / "iod_types.json"

TYPE_RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4, "?": 5}
USAGE_RANK = {"M": 0, "C": 1, "U": 2}
SOURCES = ("sop_class_iod_map.json", "iod_module_map.json", "module_attribute_map.json")


def _highdicom_data() -> tuple[str, dict, dict, dict, dict[str, str]]:
    """(version, sop class -> IOD, IOD -> modules, module -> attributes, source file -> sha256)."""
    try:
        import highdicom
    except ImportError:
        sys.exit("highdicom is not installed: .venv/bin/pip install highdicom==0.28.2")
    raw = {}
    for name in SOURCES:
        data = pkgutil.get_data("highdicom", f"_standard/{name}")
        if data is None:  # pragma: no cover - layout of highdicom < 0.24 (_iods.py / _modules.py)
            sys.exit(f"highdicom {highdicom.__version__} does not ship _standard/{name}; use highdicom 0.28.x")
        raw[name] = data
    sop, iods, modules = (json.loads(raw[n]) for n in SOURCES)
    return highdicom.__version__, sop, iods, modules, {n: hashlib.sha256(raw[n]).hexdigest() for n in SOURCES}


def compound_keywords(table: dict) -> set[str]:
    """Keywords of the exact-tag rows of our Table E.1-1 with a compound action in any column."""
    out = set()
    for row in table["rows"]:
        if row["pattern"] != "exact" or not row["keyword"]:
            continue
        acts = [row["basic"]] + [v for k, v in row.items() if k.startswith(("retain_", "clean_"))]
        if any("/" in a for a in acts):
            out.add(row["keyword"])
    return out


def iod_types(iod_modules: list[dict], modules: dict, wanted: set[str]) -> dict[str, str]:
    """keyword -> "<Type>@<usage>" for the wanted attributes at the top level of the IOD's modules."""
    best: dict[str, tuple[str, str]] = {}
    for entry in iod_modules:
        usage = entry["usage"]
        for attr in modules.get(entry["key"], ()):
            kw = attr["keyword"]
            if attr["path"] or kw not in wanted:
                continue
            kind = attr["type"] if attr["type"] in TYPE_RANK else "?"
            cand = (kind, usage)
            old = best.get(kw)
            if old is None or (TYPE_RANK[kind], USAGE_RANK.get(usage, 3)) < (TYPE_RANK[old[0]], USAGE_RANK.get(old[1], 3)):
                best[kw] = cand
    return {kw: f"{kind}@{usage}" for kw, (kind, usage) in sorted(best.items())}


def build() -> dict:
    version, sop, iods, modules, sums = _highdicom_data()
    import pydicom

    table = json.loads(TABLE.read_text())
    wanted = compound_keywords(table)
    sop_classes = {uid: iod for uid, iod in sorted(sop.items()) if iod in iods}
    out_iods = {iod: iod_types(iods[iod], modules, wanted) for iod in sorted(set(sop_classes.values()))}
    return {
        "provenance": {
            "source": f"highdicom {version} (PyPI), files highdicom/_standard/{{{','.join(SOURCES)}}}",
            "source_sha256": sums,
            "highdicom_version": version,
            "dicom_edition": "not stated by highdicom; its _standard data are PS3.3 IOD and module tables "
            "extracted by innolitics/dicom-standard",
            "pydicom_version": pydicom.__version__,
            "table_e1_1_edition": table["provenance"].get("edition"),
            "generated_by": "scripts/build_iod_types.py",
            "built": dt.date.today().isoformat(),
            "sop_class_count": len(sop_classes),
            "iod_count": len(out_iods),
            "compound_keywords": sorted(wanted),
            "format": "sop_classes: SOP Class UID -> IOD key; iods: IOD key -> {keyword: '<Type>@<module usage>'} for "
            "the compound-action attributes at the top level of the IOD (strongest Type across its modules; "
            "'?' = type not given). A keyword absent from an IOD is in none of its modules.",
        },
        "sop_classes": sop_classes,
        "iods": out_iods,
    }


def dump(doc: dict) -> str:
    """Sorted, one line per SOP class and per IOD: small and diffable."""
    lines = ["{", f'"provenance": {json.dumps(doc["provenance"], indent=1, sort_keys=True)},', '"sop_classes": {']
    items = sorted(doc["sop_classes"].items())
    lines += [f" {json.dumps(k)}: {json.dumps(v)}{',' if i < len(items) - 1 else ''}" for i, (k, v) in enumerate(items)]
    lines += ["},", '"iods": {']
    items = sorted(doc["iods"].items())
    lines += [
        f" {json.dumps(k)}: {json.dumps(v, sort_keys=True, separators=(',', ':'))}{',' if i < len(items) - 1 else ''}"
        for i, (k, v) in enumerate(items)
    ]
    lines += ["}", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    doc = build()
    args.out.write_text(dump(doc))
    n_attr = sum(len(v) for v in doc["iods"].values())
    print(f"{args.out}: {len(doc['sop_classes'])} SOP classes, {len(doc['iods'])} IODs, {n_attr} (IOD, attribute) types")


if __name__ == "__main__":
    main()
