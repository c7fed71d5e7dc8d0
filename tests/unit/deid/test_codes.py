"""The CID 7050 codes the relay writes are the standard's: each value and meaning equals pydicom's code dictionary.

codes.py writes them out (importing ``pydicom.sr.codedict`` on every start costs more than the rest of the
engine's imports); this test is what keeps them the standard's own.
"""

from __future__ import annotations

import subprocess
import sys

from pydicom.sr.codedict import codes as standard

from dicom_relay.deid import codes


def test_every_code_equals_pydicoms_code_dictionary():
    written = [codes.BASIC, codes.CLEAN_PIXEL, *codes.OPTION_CODES.values()]
    assert len({c.value for c in written}) == len(written) == len(codes.CODEDICT_NAMES)
    for code in written:
        ref = getattr(standard.DCM, codes.CODEDICT_NAMES[code.value])
        assert (code.value, code.scheme_designator, code.meaning) == (ref.value, ref.scheme_designator, ref.meaning)


def test_the_engine_does_not_import_the_code_dictionary():
    probe = "import sys, dicom_relay.deid, dicom_relay.cli; print('pydicom.sr.codedict' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
