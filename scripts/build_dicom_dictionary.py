#!/usr/bin/env python
"""Build ``include/dicom_relay/deid/data/dicom_dictionary.json``: the parts of the DICOM data dictionary that the
de-identification engine's raw path needs, so that ``dicom-relay deidentify`` does not import pydicom at all when
every file takes that path (``import pydicom`` costs 0.35-0.45 CPU-s: numpy, PIL, its pixel handlers...).

The source is the installed pydicom's own dictionary (PS3.6 and PS3.7 as pydicom ships them):

* ``tags``: the VR and keyword of every tag of ``pydicom.datadict.DicomDictionary`` (PS3.6 Table 6-1 data
  elements, command elements of PS3.7 included), the VR as pydicom writes it ("US or SS" where the standard
  allows several);
* ``repeaters``: the same for the repeating groups of ``RepeatersDictionary`` (50xx curves, 60xx overlays,
  (0020,31xx)...), keyed by pydicom's mask ("60xx3000");
* ``uids``: every UID of ``pydicom.uid.UID_dictionary`` (PS3.6 Table A-1 and friends) with its name and type, as
  the relay's processes see it: pynetdicom (a dependency, imported to send) adds the transfer syntaxes of the
  standard that pydicom lacks (JPEG XL, Deflated Image Frame Compression) when it is imported, so it is imported
  here first and the table does not depend on which was imported first;
* ``implementation_uid``: ``pydicom.uid.PYDICOM_IMPLEMENTATION_UID``, which the relay writes as Implementation
  Class UID (0002,0012) on both of its paths.

``tests/unit/deid/test_dictionary.py`` compares the table with the pydicom that is installed, so that an upgrade
of pydicom that changes its dictionary fails a test until this script is run again::

    .venv/bin/python scripts/build_dicom_dictionary.py
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "include" / "dicom_relay" / "deid" / "data" / "dicom_dictionary.json"


def build() -> dict:
    import pynetdicom  # noqa: F401 - completes pydicom's UID_dictionary (see above)
    from pydicom.datadict import DicomDictionary, RepeatersDictionary
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID_dictionary

    version = metadata.version("pydicom")
    return {
        "provenance": {
            "source": f"pydicom {version}: pydicom.datadict.DicomDictionary and RepeatersDictionary (PS3.6 Table 6-1, "
                      f"PS3.7 command elements), pydicom.uid.UID_dictionary (PS3.6 Table A-1) with the transfer "
                      f"syntaxes pynetdicom {metadata.version('pynetdicom')} adds to it, "
                      f"pydicom.uid.PYDICOM_IMPLEMENTATION_UID",
            "pydicom": version,
            "pynetdicom": metadata.version("pynetdicom"),
            "built_by": "scripts/build_dicom_dictionary.py",
            "checked_by": "tests/unit/deid/test_dictionary.py (against the installed pydicom)",
        },
        "implementation_uid": str(PYDICOM_IMPLEMENTATION_UID),
        "tags": {f"{tag:08X}": [entry[0], entry[4]] for tag, entry in sorted(DicomDictionary.items())},
        "repeaters": {mask: entry[0] for mask, entry in sorted(RepeatersDictionary.items())},
        "uids": {uid: [info[0], info[1]] for uid, info in sorted(UID_dictionary.items())},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    table = build()
    args.out.write_text(json.dumps(table, indent=0, sort_keys=False) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: {len(table['tags'])} tags, "
          f"{len(table['repeaters'])} repeating groups, {len(table['uids'])} UIDs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
