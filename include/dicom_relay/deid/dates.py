"""Date handling for Retain Longitudinal Temporal Information with Modified Dates (PS3.15 E.3.6).

Every date moves by the patient's jitter (a whole number of days), so intervals between any two dates of the
patient are preserved. Times of day are not changed (the shift is whole days). A value that does not parse is
never kept: the caller removes it (``None`` is returned).
"""

from __future__ import annotations

import datetime as dt
import re

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
# DT: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
# ACR-NEMA style dates (YYYY.MM.DD) still occur in old files.
_DA_OLD = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")


def shift_da(value: str, days: int) -> str | None:
    """Shift one DA value; ``None`` if it is not a valid date."""
    v = value.strip()
    m = _DA.match(v) or _DA_OLD.match(v)
    if not m:
        return None
    try:
        d = dt.date(int(m[1]), int(m[2]), int(m[3])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def shift_dt(value: str, days: int) -> str | None:
    """Shift one DT value keeping its precision, time of day and UTC offset; ``None`` if it does not parse."""
    v = value.strip()
    m = _DT.match(v)
    if not m:
        return None
    year, month, day = m[1], m[2], m[3]
    rest = "".join(x or "" for x in m.groups()[3:])
    try:
        if month is None:
            # Year only: a shift of days cannot be represented faithfully; shift the year by the rounded amount.
            return f"{int(year) + round(days / 365.25):04d}{rest}"
        if day is None:
            first = dt.date(int(year), int(month), 1) + dt.timedelta(days=days)
            return f"{first.year:04d}{first.month:02d}{rest}"
        d = dt.date(int(year), int(month), int(day)) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if m[4] is not None and not (0 <= int(m[4]) <= 23):
        return None
    return f"{d.year:04d}{d.month:02d}{d.day:02d}{rest}"


_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$|^\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")


def check_tm(value: str) -> str | None:
    """A TM value is kept as it is (whole-day shifts do not move the time of day) if it parses, else ``None``."""
    v = value.strip()
    if not _TM.match(v):
        return None
    digits = v.replace(":", "")
    hh, mm, ss = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    return v if hh < 24 and mm < 60 and ss < 61 else None


def shift_value(vr: str, value: str, days: int) -> str | None:
    """Shift a possibly multi-valued (backslash separated) DA/DT/TM string; ``None`` if any part is invalid."""
    fn = {"DA": shift_da, "DT": shift_dt}.get(vr)
    parts = value.split("\\")
    out = []
    for p in parts:
        if not p.strip():
            out.append("")
            continue
        r = check_tm(p) if vr == "TM" else fn(p, days)  # type: ignore[misc]
        if r is None:
            return None
        out.append(r)
    return "\\".join(out)
