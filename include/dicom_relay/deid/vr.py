"""Value Representations as the de-identification code needs them: classes of VRs, the data dictionary's VR
of a tag, and whether a text value is valid for its VR (PS3.5 Table 6.2-1).

A leaf module: it imports only :mod:`dicom_relay.deid.dictionary` (itself a leaf, no pydicom) so that every other
module of ``deid`` may use it.
"""

from __future__ import annotations

import re
from functools import lru_cache

from dicom_relay.deid.dictionary import dictionary_vr

#: Free text and names: what a person types, so what may hold an identity.
TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
#: Dates and times: handled by the Retain Longitudinal Temporal Information option in force.
DATE_VRS = frozenset({"DA", "DT", "TM"})
#: Values that cannot be read as text, so cannot be cleaned.
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})

#: Every VR of PS3.5 as it appears in an explicit VR header.
VALID_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
#: VRs whose explicit VR header has two reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
LONG_VR_NAMES = frozenset(v.decode() for v in LONG_VRS)


@lru_cache(maxsize=4096)
def dict_vr(tag: int) -> str:
    """The VR the data dictionary gives ``tag``; the first one where it gives several (``"US or SS"``);
    ``"UN"`` for a tag it does not know (private tags included)."""
    try:
        vr = dictionary_vr(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0] if " or " in vr else vr


# --- validity of a text value -----------------------------------------------------------------------------
# Maximum length in characters of one value (PS3.5 Table 6.2-1); None: no limit beyond the length field.
MAX_CHARS = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
             "PN": 64 * 3 + 2, "SH": 16, "ST": 1024, "TM": 14, "UC": None, "UI": 64, "UR": None, "UT": None}
#: VRs whose value is one value even if it holds a backslash (VM is always 1).
SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
# Control characters: only ESC (character set switching) in the short texts; the long texts also allow the
# format effectors TAB, LF, FF and CR.
_CONTROL_SHORT = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_CONTROL_LONG = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_CS = re.compile(r"^[A-Z0-9 _]*$")
_AE_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def valid_text(vr: str, text: str) -> bool:
    """Whether ``text`` (several values separated by backslashes where the VM allows) is a valid value of
    ``vr``: each value within the VR's length and character repertoire. Only the string VRs a cleaner can
    keep are checked (AE, CS, PN, SH, LO, ST, LT, UT, UC, UR); any other VR is reported invalid."""
    if vr not in ("AE", "CS", "PN", "SH", "LO", "ST", "LT", "UT", "UC", "UR"):
        return False
    values = [text] if vr in SINGLE_VALUED else text.split("\\")
    limit = MAX_CHARS[vr]
    control = _CONTROL_LONG if vr in ("ST", "LT", "UT") else _CONTROL_SHORT
    for v in values:
        if limit is not None and len(v) > limit:
            return False
        if vr == "CS":
            if not _CS.match(v):
                return False
        elif vr == "AE":
            if _AE_CONTROL.search(v) or (v and not v.strip()):
                return False
        elif vr == "UR":
            if " " in v.strip() or control.search(v):
                return False
        elif control.search(v):
            return False
        if vr == "PN" and (v.count("=") > 2 or any(len(g) > 64 or g.count("^") > 4 for g in v.split("="))):
            return False
    return True
