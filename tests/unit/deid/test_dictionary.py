"""The raw path's copy of the data dictionary (dicom_relay/deid/dictionary.py) against the installed pydicom.

The table is generated from pydicom by scripts/build_dicom_dictionary.py; an upgrade of pydicom that changes its
dictionary fails here until the script is run again.
"""

from __future__ import annotations

import random

import pydicom
import pynetdicom  # noqa: F401 - adds transfer syntaxes to pydicom's UID_dictionary, as in the relay's processes
from pydicom.datadict import DicomDictionary, RepeatersDictionary, dictionary_VR, keyword_dict
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, UID_dictionary

from dicom_relay.deid import dictionary
from dicom_relay.deid.engine import _marking_elements, _raw_marking
from dicom_relay.deid.options import DeidOptions
from dicom_relay.deid.rawpath import frame

from .test_profile import OPTION_SETS


def _pydicom_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _table_vr(tag: int) -> str | None:
    try:
        return dictionary.dictionary_vr(tag)
    except KeyError:
        return None


def test_the_table_is_built_from_the_installed_pydicom():
    assert dictionary._table()["provenance"]["pydicom"] == pydicom.__version__
    assert dictionary.implementation_uid() == PYDICOM_IMPLEMENTATION_UID
    assert dictionary.uids() == {uid: tuple(info[:2]) for uid, info in UID_dictionary.items()}


def test_every_tag_and_repeating_group_has_pydicoms_vr():
    tags = list(DicomDictionary)
    # Members of every repeating group (50xx, 60xx, (0020,31xx), (1000,xxx0)...): each x digit varied.
    rng = random.Random(7)
    for mask in RepeatersDictionary:
        for _ in range(8):
            tags.append(int("".join(rng.choice("0123456789ABCDEF") if c == "x" else c for c in mask), 16))
    # Unknown public tags, private tags, private creators: KeyError on both sides.
    tags += [0x00091010, 0x00090010, 0x7FE10010, 0x00100011, 0x40000000, 0xFFFEE000, 0x00080000, 0x00100000]
    tags += [rng.getrandbits(32) for _ in range(2000)]
    assert [_table_vr(t) for t in tags] == [_pydicom_vr(t) for t in tags]


def test_keywords_and_transfer_syntaxes_as_pydicom():
    assert all(dictionary.tag_for_keyword(k) == t for k, t in keyword_dict.items() if k)
    assert dictionary.tag_for_keyword("NoSuchKeyword") is None
    syntaxes = [uid for uid, info in UID_dictionary.items() if info[1] == "Transfer Syntax"]
    for uid in syntaxes:
        u = UID(uid)
        assert dictionary.transfer_syntax(uid) == (u.is_implicit_VR, u.is_little_endian, u.is_deflated,
                                                   u.is_compressed), uid
    for not_a_syntax in ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.4.999", ""):
        assert dictionary.transfer_syntax(not_a_syntax) is None
        assert not UID(not_a_syntax).is_transfer_syntax


def test_the_raw_marking_is_what_pydicom_writes():
    """The marking attributes the raw path encodes itself, byte for byte as pydicom encodes them."""
    every = DeidOptions(**{k: True for k in ("retain_patient_characteristics", "retain_device_identity",
                                             "retain_institution_identity", "retain_uids", "clean_descriptors")})
    for options in [*OPTION_SETS.values(), every]:
        for implicit in (True, False):
            ref = {tag: frame(tag, None if implicit else elem.VR.encode(), elem.value, implicit)
                   for tag, elem in _marking_elements(options, implicit, True).items()}
            assert _raw_marking(options, implicit) == ref, (options, implicit)
