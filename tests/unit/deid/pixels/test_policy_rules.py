"""Which images are read and how strictly (policy.py); header-matched rectangles from YAML (rules.py)."""

import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, UltrasoundImageStorage

from dicom_relay.deid import DeidError
from dicom_relay.deid.pixels import policy, rules


@pytest.mark.parametrize("modality,sop,burned,image_type,scanned", [
    ("US", UltrasoundImageStorage, "", "ORIGINAL\\PRIMARY", True),
    ("OT", SecondaryCaptureImageStorage, "", "", True),
    ("XA", "1.2.840.10008.5.1.4.1.1.12.1", "", "ORIGINAL\\PRIMARY", True),
    ("RF", "1.2.840.10008.5.1.4.1.1.12.2", "", "", True),
    ("CT", CTImageStorage, "YES", "ORIGINAL\\PRIMARY\\AXIAL", True),
    ("CT", CTImageStorage, "", "DERIVED\\SECONDARY\\SCREEN SAVE", True),
    ("CT", CTImageStorage, "", "ORIGINAL\\PRIMARY\\DOSE_INFO", True),
    ("CT", CTImageStorage, "NO", "ORIGINAL\\PRIMARY\\AXIAL", False),
    ("MR", "1.2.840.10008.5.1.4.1.1.4", "", "ORIGINAL\\PRIMARY\\M\\ND", False),
])
def test_which_images_are_read(modality, sop, burned, image_type, scanned):
    assert (policy.scan_reason(modality, sop, burned, image_type) is not None) == scanned
    # scan_all reads every image; a reason never holds a value of the header beyond the modality.
    assert policy.scan_reason(modality, sop, burned, image_type, scan_all=True) is not None


def test_a_run_may_only_make_the_policy_stricter():
    assert policy.at_least("clean", None) == "clean"
    assert policy.at_least("clean", "ALL_TEXT") == "all-text"
    assert policy.at_least("all-text", "hold") == "hold"
    with pytest.raises(DeidError, match="weaker"):
        policy.at_least("all-text", "clean")
    with pytest.raises(DeidError, match="must be one of"):
        policy.at_least("clean", "off")


RULES = """
version: 1
rules:
  - id: acme-banner
    match: {Manufacturer: "ACME*", ManufacturerModelName: [X200, X300], Rows: 480, Columns: 640}
    boxes: [[0, 0, 640, 40], [-120, -30, 99999, 99999]]
  - id: any-us-outside
    match: {Modality: US}
    outside_ultrasound_regions: true
  - id: disabled
    enabled: false
    match: {}
    boxes: [[0, 0, 10, 10]]
"""


def _ds(**kw):
    ds = Dataset()
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName, ds.Rows, ds.Columns = "US", "Acme Medical", "X300", 480, 640
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _region(x0, y0, x1, y1):
    item = Dataset()
    item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x0, y0, x1, y1
    return item


def test_rules_match_headers_and_give_clipped_boxes():
    rs = rules.RuleSet.parse(RULES)
    assert [r.id for r in rs.rules] == ["acme-banner", "any-us-outside"]  # disabled rules are not loaded
    # Manufacturer matches case-insensitively with a wildcard; negative coordinates count from the far edge.
    assert rs.boxes_for(_ds()) == [("acme-banner", [(0, 0, 640, 40), (520, 450, 640, 480)])]
    assert rs.boxes_for(_ds(ManufacturerModelName="X100")) == []
    assert rs.boxes_for(_ds(Rows=600)) == []


def test_outside_the_ultrasound_regions_covers_every_other_pixel():
    ds = _ds(Manufacturer="Other", SequenceOfUltrasoundRegions=[_region(100, 50, 539, 429)])
    [(rid, boxes)] = rules.RuleSet.parse(RULES).boxes_for(ds)
    assert rid == "any-us-outside"
    import numpy as np

    covered = np.zeros((480, 640), int)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] += 1
    assert covered.max() == 1  # no pixel twice
    assert covered[50:430, 100:540].sum() == 0  # the region (DICOM's max corner is inclusive) is kept
    assert covered.sum() == 480 * 640 - 380 * 440


@pytest.mark.parametrize("text,message", [
    ("rules: []", "version: 1"),
    ("version: 1\nrules:\n  - id: a\n    match: {PatientName: X}\n    boxes: [[0,0,1,1]]", "cannot match on"),
    ("version: 1\nrules:\n  - id: a\n    boxes: [[0,0,1]]", "a box must be"),
    ("version: 1\nrules:\n  - id: a\n    match: {Modality: US}", "blanks nothing"),
    ("version: 1\nrules:\n  - id: a\n    boxes: [[0,0,1,1]]\n  - id: a\n    boxes: [[0,0,1,1]]", "duplicate"),
    ("version: 1\nrules:\n  - id: a\n    box: [[0,0,1,1]]", "unknown key"),
])
def test_a_bad_rule_file_is_refused_with_the_rule_named(text, message):
    with pytest.raises(rules.RuleError, match=message):
        rules.RuleSet.parse(text)


def test_the_shipped_rule_file_loads():
    shipped = rules.load()
    assert shipped.source == "pixel_rules.yaml"
    assert shipped.rules == ()  # its one rule (outside the ultrasound regions) ships disabled
