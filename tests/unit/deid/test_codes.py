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


def test_deidentifying_a_ct_study_loads_no_pixel_stage(tmp_path):
    """`dicom-relay deidentify` of primary CT (no pixel scan under the default policy) does not import the pixel
    stage (OCR, OpenCV) nor the SR code dictionary: a CT study does not pay for them at start."""
    from tests.support.samples import generate_ct_study

    study = generate_ct_study(tmp_path / "in", n_instances=2, rows=8, columns=8)
    probe = (
        "import sys; from dicom_relay.cli import main; code = main(['deidentify', sys.argv[1], sys.argv[2]]); "
        "heavy = ('cv2', 'tesserocr', 'dicom_relay.deid.pixels.stage', 'dicom_relay.deid.pixels.ocr', "
        "'pydicom.sr.codedict'); print(code, sorted(m for m in heavy if m in sys.modules))"
    )
    import os

    env = {**os.environ, "RELAY_SECRET_KEY": "k"}
    out = subprocess.run([sys.executable, "-c", probe, str(study.folder), str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2
