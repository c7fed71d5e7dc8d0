#!/usr/bin/env python
"""Build ``include/dicom_relay/deid/data/iod_types.json``: the Type of the profile's attributes along sequence paths.

PS3.15 Table E.1-1 gives some attributes a compound action (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) whose branch depends on
whether the instance's IOD requires the attribute (PS3.15 E.1.1), and removes (X) or empties (Z) others that some
IODs require (Type 1 or 2, or 1C/2C such as a veterinary patient's Responsible Person). ``dicom_relay.deid.table``
decides both from this file. It is derived from highdicom's copy of the standard's IOD and module tables (PS3.3,
extracted by innolitics/dicom-standard, macros expanded): SOP Class UID -> IOD, IOD -> modules with their usage
(M, C, U), module -> attributes with their Type (1, 1C, 2, 2C, 3) and their sequence path from the top level.

highdicom is needed only to run this script (it is not a dependency of the relay; pinned in
requirements-build.txt)::

    .venv/bin/python -m pip install -r requirements-build.txt
    .venv/bin/python scripts/build_iod_types.py

Written per module, not per IOD (IODs share most modules; the relay joins them per SOP class when it first sees
one):

* for every attribute that has an X, Z or compound action in our shipped Table E.1-1 (any column), the
  strongest Type (1 > 1C > 2 > 2C > 3) it has at each place in the module, keyed by the path of sequence keywords
  and the keyword joined with ``>`` (``"VerifyingObserverSequence>VerifyingOrganization"``; a top-level attribute
  is its bare keyword). A type highdicom leaves empty is written as ``?`` (unknown).

At the top level an attribute that no module of the IOD lists is not required (Type 3 for the profile). Inside a
sequence the relay takes a listed Type only: an attribute the data do not list there (a sequence described by a
macro highdicom leaves open, a private or non-standard sequence) gets the safe default of its action.

The SR content tree is recursive (PS3.3 C.17.3: every Content Sequence item is a content item like the root, and
highdicom lists the root's attributes only), so a path is cut after its last Content Sequence:
``ContentSequence>ContentSequence>ReferencedSOPSequence`` is looked up as ``ReferencedSOPSequence`` (the same rule
the relay applies at run time).
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
SOURCES = ("sop_class_iod_map.json", "iod_module_map.json", "module_attribute_map.json")
CONTENT_SEQUENCE = "ContentSequence"


def _highdicom_data() -> tuple[str, dict, dict, dict, dict[str, str]]:
    """(version, sop class -> IOD, IOD -> modules, module -> attributes, source file -> sha256)."""
    try:
        import highdicom
    except ImportError:
        sys.exit("highdicom is not installed: .venv/bin/python -m pip install -r requirements-build.txt")
    raw = {}
    for name in SOURCES:
        data = pkgutil.get_data("highdicom", f"_standard/{name}")
        if data is None:  # pragma: no cover - layout of highdicom < 0.24 (_iods.py / _modules.py)
            sys.exit(f"highdicom {highdicom.__version__} does not ship _standard/{name}; use highdicom 0.28.x")
        raw[name] = data
    sop, iods, modules = (json.loads(raw[n]) for n in SOURCES)
    return highdicom.__version__, sop, iods, modules, {n: hashlib.sha256(raw[n]).hexdigest() for n in SOURCES}


def profile_keywords(table: dict) -> tuple[set[str], set[str]]:
    """(keywords with a compound action in any column, keywords with X, Z or a compound in any column)."""
    compound, wanted = set(), set()
    for row in table["rows"]:
        if row["pattern"] != "exact" or not row["keyword"]:
            continue
        acts = [row["basic"]] + [v for k, v in row.items() if k.startswith(("retain_", "clean_"))]
        if any("/" in a for a in acts):
            compound.add(row["keyword"])
        if any("/" in a or a in ("X", "Z") for a in acts):
            wanted.add(row["keyword"])
    return compound, wanted


def cut_content_tree(path: list[str]) -> list[str]:
    """The path after the last Content Sequence (content items nest without limit and are like the root)."""
    if CONTENT_SEQUENCE in path[:-1]:
        last = len(path) - 2 - path[-2::-1].index(CONTENT_SEQUENCE)
        return path[last + 1 :]
    return path


def module_types(attrs: list[dict], wanted: set[str]) -> dict[str, str]:
    """{"Seq>...>Keyword": Type} of one module for the wanted keywords."""
    types: dict[str, str] = {}
    for attr in attrs:
        kw = attr["keyword"]
        if kw not in wanted:
            continue
        key = ">".join(cut_content_tree(list(attr["path"]) + [kw]))
        kind = attr["type"] if attr["type"] in TYPE_RANK else "?"
        old = types.get(key)
        if old is None or TYPE_RANK[kind] < TYPE_RANK[old]:
            types[key] = kind
    return dict(sorted(types.items()))


def build() -> dict:
    version, sop, iods, modules, sums = _highdicom_data()
    import pydicom

    table = json.loads(TABLE.read_text())
    compound, wanted = profile_keywords(table)
    sop_classes = {uid: iod for uid, iod in sorted(sop.items()) if iod in iods}
    used_iods = sorted(set(sop_classes.values()))
    out_iods = {iod: [[m["key"], m["usage"]] for m in iods[iod] if m["key"] in modules] for iod in used_iods}
    used_modules = sorted({m for mods in out_iods.values() for m, _ in mods})
    out_modules = {m: module_types(modules[m], wanted) for m in used_modules}
    out_modules = {m: types for m, types in out_modules.items() if types}
    n_types = sum(len(m) for m in out_modules.values())
    n_nested = sum(1 for m in out_modules.values() for k in m if ">" in k)
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
            "module_count": len(out_modules),
            "typed_path_count": n_types,
            "nested_typed_path_count": n_nested,
            "compound_keywords": sorted(compound),
            "typed_keywords": sorted(wanted),
            "format": "sop_classes: SOP Class UID -> IOD key; iods: IOD key -> [[module key, usage M|C|U], ...]; "
            "modules: module key -> {'Seq>...>Keyword': Type (1, 1C, 2, 2C, 3, ? = not given)} for the "
            "typed_keywords (X, Z or compound action in Table E.1-1 in any column), the strongest Type at that path "
            "in the module (modules without such attributes are left out). Paths are cut after their last "
            "ContentSequence (the SR content tree is recursive: content items are looked up like the root).",
        },
        "sop_classes": sop_classes,
        "iods": out_iods,
        "modules": out_modules,
    }


def dump(doc: dict) -> str:
    """Sorted, one line per SOP class, per IOD and per module: diffable."""
    lines = ["{", f'"provenance": {json.dumps(doc["provenance"], indent=1, sort_keys=True)},']
    for i, section in enumerate(("sop_classes", "iods", "modules")):
        lines.append(f'"{section}": {{')
        items = sorted(doc[section].items())
        lines += [
            f" {json.dumps(k)}: {json.dumps(v, sort_keys=True, separators=(',', ':'))}{',' if j < len(items) - 1 else ''}"
            for j, (k, v) in enumerate(items)
        ]
        lines.append("}," if i < 2 else "}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    doc = build()
    args.out.write_text(dump(doc))
    p = doc["provenance"]
    print(
        f"{args.out}: {p['sop_class_count']} SOP classes, {p['iod_count']} IODs, {p['module_count']} modules, "
        f"{p['typed_path_count']} typed (module, path) entries of which {p['nested_typed_path_count']} inside sequences"
    )


if __name__ == "__main__":
    main()
