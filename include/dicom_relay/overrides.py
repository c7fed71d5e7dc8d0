"""Which per-run overrides would weaken de-identification (the ``process_study`` params).

Anyone who may trigger ``process_study`` may pass params; the deployment (its environment) decides how far a
study is de-identified. A run may therefore make de-identification *stricter* (remove dates instead of shifting
them, hold back another modality, a stricter pixel policy) but never *weaker* (``deidentify=false``, a
``retain_*`` or ``clean_*`` option, keeping full dates, holding back less, a weaker pixel policy, another pixel
rule file) unless the deployment sets ``RELAY_ALLOW_UNSAFE_OVERRIDES=true``.

The send switches (``send_orthanc``, ``send_gcs``) are not de-identification: switching a destination off sends
less, switching one on sends what the deployment's de-identification produced.

Each option of :class:`dicom_relay.deid.DeidOptions` has a rule below; an option without one (added later) is
weaker whenever it differs from the deployment's, so a new option is safe until someone states its order.
"""

from __future__ import annotations

from typing import Any, Mapping

from dicom_relay.deid import DeidOptions
from dicom_relay.deid.errors import DeidError

ALLOW_VARIABLE = "RELAY_ALLOW_UNSAFE_OVERRIDES"

#: Modes from the weakest (keeps the most) to the strictest.
ORDERED: dict[str, tuple[str, ...]] = {
    # Full Dates keeps real dates; Modified Dates keeps shifted ones; remove keeps none.
    "dates": ("full", "modified", "remove"),
    # dicom_relay.deid.pixels.policy.POLICIES: clean < all-text < hold.
    "pixels": ("clean", "all-text", "hold"),
}
#: Options that keep more of the instance when true: the PS3.15 Retain and Clean options (a Clean option keeps a
#: cleaned value where the Basic Profile removes it).
WEAKER_WHEN_TRUE = frozenset({
    "retain_patient_characteristics", "retain_device_identity", "retain_institution_identity", "retain_uids",
    "retain_safe_private", "clean_descriptors", "clean_structured_content", "clean_graphics",
})
#: Options that hold back or read more when true.
WEAKER_WHEN_FALSE = frozenset({"quarantine_burned_in", "quarantine_secondary_capture", "pixel_scan_all"})
#: Sets where dropping a member is weaker (a modality no longer held back).
WEAKER_WHEN_SMALLER = frozenset({"quarantine_modalities"})


class UnsafeOverride(ValueError):
    """A run asked for weaker de-identification than the deployment's, and the deployment does not allow it."""


def _weaker(name: str, deployed: Any, run: Any) -> bool:
    if deployed == run:
        return False
    if name in ORDERED:
        order = ORDERED[name]
        return order.index(run) < order.index(deployed)
    if name in WEAKER_WHEN_TRUE:
        return bool(run) and not bool(deployed)
    if name in WEAKER_WHEN_FALSE:
        return bool(deployed) and not bool(run)
    if name in WEAKER_WHEN_SMALLER:
        return not set(deployed) <= set(run)
    # No rule: any change may weaken (a different pixel rule file, an option added later).
    return True


def weakenings(deployed_deidentify: bool, deployed_deid: Mapping[str, Any], run_deidentify: bool,
               run_deid: Mapping[str, Any]) -> list[str]:
    """Name every way the run's options are weaker than the deployment's (empty: the run is as strict or
    stricter). ``*_deid`` are :class:`DeidOptions` fields as mappings (``RELAY_DEID_OPTIONS``, merged with the
    run's ``deid_options``). Raises ``DeidError`` when a mapping names an unknown option or a bad value."""
    problems = []
    if deployed_deidentify and not run_deidentify:
        problems.append("deidentify=false (the deployment de-identifies)")
    if not run_deidentify:
        # Nothing is de-identified: the options do not apply.
        return problems
    deployed = DeidOptions.from_mapping(deployed_deid).to_dict()
    run = DeidOptions.from_mapping(run_deid).to_dict()
    for name, value in run.items():
        if _weaker(name, deployed[name], value):
            problems.append(f"{name}={_show(value)}, weaker than the deployment's '{_show(deployed[name])}'")
    return problems


def refuse_weaker(allow_unsafe: bool, *args: Any) -> None:
    """Raise :class:`UnsafeOverride` naming each weakening unless the deployment allows unsafe overrides.
    Arguments after ``allow_unsafe`` are those of :func:`weakenings`."""
    try:
        problems = weakenings(*args)
    except DeidError as exc:
        raise UnsafeOverride(f"the run's de-identification options are not valid: {exc}") from None
    if problems and not allow_unsafe:
        raise UnsafeOverride(
            "the run's params would weaken de-identification: " + "; ".join(problems)
            + f". A run may only make it stricter; a deployment that accepts weaker runs sets {ALLOW_VARIABLE}=true"
        )


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) or '""'

