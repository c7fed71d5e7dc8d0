"""The options of the PS3.15 Basic Application Level Confidentiality Profile, as one frozen value.

Defaults: the Basic Profile plus *Retain Longitudinal Temporal Information with Modified Dates* (dates move by the
patient's jitter), every other option off; instances likely to carry burned-in text (ultrasound, secondary
capture, BurnedInAnnotation YES, ...: :mod:`dicom_relay.deid.pixels.policy`) have their pixels cleaned and proved
under the pixel policy ``clean``. ``from_mapping`` accepts the same names as strings (environment, DAG params,
CLI flags), ``to_dict`` gives them back.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Mapping

from dicom_relay.deid.errors import DeidError
from dicom_relay.deid.pixels import policy as pixel_policy

DATE_MODES = ("modified", "full", "remove")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class DeidOptions:
    #: Retain Longitudinal Temporal Information: "modified" (Modified Dates option, 113107: shift every date by
    #: the patient's jitter), "full" (Full Dates option, 113106: keep dates) or "remove" (neither option: the
    #: Basic Profile actions apply to dates, and dates the table does not name are removed).
    dates: str = "modified"
    #: Retain Patient Characteristics Option (113108): sex, age, size, weight, ... kept.
    retain_patient_characteristics: bool = False
    #: Retain Device Identity Option (113109): station name, serial numbers, AE titles kept.
    retain_device_identity: bool = False
    #: Retain Institution Identity Option (113112): institution name, address, department kept.
    retain_institution_identity: bool = False
    #: Retain UIDs Option (113110): no UID is replaced.
    retain_uids: bool = False
    #: Retain Safe Private Option (113111): private elements on the documented safe list are kept.
    retain_safe_private: bool = False
    #: Clean Descriptors Option (113105): descriptions and comments are kept after removing identifying values
    #: found elsewhere in the instance, instead of being removed.
    clean_descriptors: bool = False
    #: Clean Structured Content Option (113104): SR content and acquisition context are kept and cleaned.
    clean_structured_content: bool = False
    #: Clean Graphics Option (113103): graphic annotations are kept with their text cleaned; overlay and curve
    #: bitmaps cannot be cleaned automatically, so they are removed (a removed graphic holds no identity).
    clean_graphics: bool = False
    #: Pixel policy (:mod:`dicom_relay.deid.pixels.policy`): "clean" (identifying text and dates blanked,
    #: proved gone), "all-text" (every text blanked, proved gone) or "hold" (scanned images held back).
    pixels: str = "clean"
    #: Pixel rule file (YAML, see deid/data/pixel_rules.yaml); empty: the shipped one.
    pixel_rules: str = ""
    #: Read every image's pixels, CT and MR primary images included (slower; by default they are not read).
    pixel_scan_all: bool = False
    #: Hold back instances whose BurnedInAnnotation is YES, whatever the pixel policy.
    quarantine_burned_in: bool = False
    #: Hold back secondary capture SOP classes, whatever the pixel policy.
    quarantine_secondary_capture: bool = False
    #: Hold back these modalities, whatever the pixel policy. A comma separated string is accepted by from_mapping.
    quarantine_modalities: tuple[str, ...] = ()

    def __post_init__(self):
        if self.dates not in DATE_MODES:
            raise DeidError(f"DeidOptions.dates must be one of {', '.join(DATE_MODES)}, got {self.dates!r}")
        object.__setattr__(self, "pixels", pixel_policy.check(self.pixels))
        # Normalise so that equal options compare and hash equal whatever the input form.
        mods = self.quarantine_modalities
        if isinstance(mods, str):
            mods = tuple(m for m in mods.split(","))
        object.__setattr__(self, "quarantine_modalities", tuple(sorted({m.strip().upper() for m in mods if m.strip()})))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "DeidOptions":
        """Build options from a mapping of field name to value; strings such as "true"/"0" are parsed.

        Unknown names are an error (a typo must not silently weaken de-identification). ``None`` keeps the default.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DeidError(f"unknown de-identification option(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, raw in values.items():
            if raw is None:
                continue
            default = known[name].default
            if isinstance(default, bool):
                if isinstance(raw, str):
                    word = raw.strip().lower()
                    if word not in _TRUE | _FALSE:
                        raise DeidError(f"de-identification option {name} must be true or false")
                    raw = word in _TRUE
                kwargs[name] = bool(raw)
            elif name == "quarantine_modalities":
                kwargs[name] = tuple(raw.split(",")) if isinstance(raw, str) else tuple(raw)
            elif name == "pixel_rules":
                kwargs[name] = str(raw).strip()  # a path: case matters
            else:
                kwargs[name] = str(raw).strip().lower()
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON-able values; ``from_mapping(o.to_dict()) == o``."""
        d = asdict(self)
        d["quarantine_modalities"] = list(self.quarantine_modalities)
        return d

    def enabled_table_options(self) -> tuple[str, ...]:
        """The option columns of the shipped table that apply, in the table's column names."""
        out = [
            name
            for name in (
                "retain_patient_characteristics",
                "retain_device_identity",
                "retain_institution_identity",
                "retain_uids",
                "retain_safe_private",
                "clean_descriptors",
                "clean_structured_content",
                "clean_graphics",
            )
            if getattr(self, name)
        ]
        if self.dates == "modified":
            out.append("retain_modified_dates")
        elif self.dates == "full":
            out.append("retain_full_dates")
        return tuple(out)


assert all(f.default is not MISSING for f in fields(DeidOptions))
