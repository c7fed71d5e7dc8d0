"""UID replacement (action U): a keyed hash under the 2.25 arc, the same in every process and worker.

``remap_uid(uid, key)`` = "2.25." + the decimal value of the first 128 bits of HMAC-SHA256(key, uid), with the
version/variant bits of an RFC 9562 version 8 (custom) UUID set, which is how ISO/IEC 9834-8 (and PS3.5 B.2)
derive a UID from a UUID. 128 bits give at most 39 digits, so the UID is at most 44 characters (limit 64).
Without the key an attacker cannot confirm a guessed original UID; with it, every run maps the same UID to the
same replacement, so references between instances and between batches stay intact.
"""

from __future__ import annotations

import hashlib
import hmac

from dicom_relay.deid.dictionary import uids

#: UIDs defined by the standard (SOP classes, transfer syntaxes, coding schemes, well-known frames of
#: reference...). They identify a kind of thing, never a patient, and must never be replaced.
WELL_KNOWN_UIDS = frozenset(uids())


def remap_uid(uid: str, secret_key: str) -> str:
    """The de-identified replacement of ``uid``; deterministic for a given key."""
    uid = uid.strip().rstrip("\x00").strip()
    digest = hmac.new(secret_key.encode("utf-8"), uid.encode("ascii", "replace"), hashlib.sha256).digest()
    value = int.from_bytes(digest[:16], "big")
    # RFC 9562: version 8 in bits 48-51, variant 0b10 in bits 64-65 (counted from the most significant bit).
    value &= ~(0xF << 76)
    value |= 0x8 << 76
    value &= ~(0x3 << 62)
    value |= 0x2 << 62
    return f"2.25.{value}"


class UidMapper:
    """Replace instance UIDs and keep well-known ones; memoised because a study repeats the same few UIDs."""

    def __init__(self, secret_key: str):
        self._key = secret_key
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        out = self._cache.get(uid)
        if out is None:
            clean = uid.strip().rstrip("\x00").strip()
            if not clean or clean in WELL_KNOWN_UIDS:
                out = clean
            else:
                out = remap_uid(clean, self._key)
            if len(self._cache) > 100_000:  # a long-lived worker must not grow without bound
                self._cache.clear()
            self._cache[uid] = out
        return out
