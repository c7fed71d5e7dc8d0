"""A run's params may make de-identification stricter, never weaker (dicom_relay.overrides, RunOptions.resolve)."""

import json
from dataclasses import fields

import pytest

from dicom_relay import overrides
from dicom_relay.config import ConfigError, Settings
from dicom_relay.deid import DeidOptions
from dicom_relay.pipeline import RunOptions

DEFAULTS = DeidOptions().to_dict()

#: One weakening run param per DeidOptions option (from the defaults): every option that can weaken is listed.
WEAKER_DEID = {
    "dates": "full",
    "retain_patient_characteristics": True,
    "retain_device_identity": True,
    "retain_institution_identity": True,
    "retain_uids": True,
    "retain_safe_private": True,
    "clean_descriptors": True,
    "clean_structured_content": True,
    "clean_graphics": True,
    # Options whose default is already the weak end are weakened from a stricter deployment below.
}
#: A deployment that is strict on every option, and a run weaker on each.
STRICT_DEPLOYMENT = {"dates": "remove", "quarantine_burned_in": True, "quarantine_secondary_capture": True,
                     "quarantine_modalities": ["US", "XA"]}
WEAKER_THAN_STRICT = {"dates": "modified", "quarantine_burned_in": False, "quarantine_secondary_capture": False,
                      "quarantine_modalities": ["US"]}


def resolve(env: dict, params: dict) -> RunOptions:
    return RunOptions.resolve(Settings.from_env(env), params)


def test_every_option_has_a_stated_order():
    """A new DeidOptions field must be given a rule here or it is treated as weaker whenever it changes."""
    ruled = (set(overrides.ORDERED) | overrides.WEAKER_WHEN_TRUE | overrides.WEAKER_WHEN_FALSE
             | overrides.WEAKER_WHEN_SMALLER | {"pixel_rules"})
    assert {f.name for f in fields(DeidOptions)} <= ruled


@pytest.mark.parametrize("name,value", sorted(WEAKER_DEID.items()))
def test_each_weaker_deid_option_is_refused(name, value):
    with pytest.raises(ConfigError, match=rf"weaken de-identification: {name}=.*RELAY_ALLOW_UNSAFE_OVERRIDES=true"):
        resolve({}, {"deid_options": {name: value}})


@pytest.mark.parametrize("name", sorted(WEAKER_THAN_STRICT))
def test_each_weaker_than_a_strict_deployment_is_refused(name):
    env = {"RELAY_DEID_OPTIONS": json.dumps(STRICT_DEPLOYMENT)}
    with pytest.raises(ConfigError, match=rf"{name}="):
        resolve(env, {"deid_options": {name: WEAKER_THAN_STRICT[name]}})


@pytest.mark.parametrize("value", [False, 0, ""])
def test_deidentify_false_is_refused(value):
    # Only None keeps the deployment's value; False and other falsy values ask for no de-identification.
    with pytest.raises(ConfigError, match="deidentify=false"):
        resolve({}, {"deidentify": value})


def test_string_forms_of_weaker_options_are_refused():
    with pytest.raises(ConfigError, match="retain_uids"):
        resolve({}, {"deid_options": {"retain_uids": "yes"}})
    with pytest.raises(ConfigError, match="quarantine_modalities"):
        resolve({"RELAY_DEID_OPTIONS": '{"quarantine_modalities": "US,XA"}'},
                {"deid_options": {"quarantine_modalities": "xa"}})


def test_every_weakening_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        resolve({}, {"deid_options": {"retain_uids": True, "dates": "full", "retain_device_identity": True}})
    assert all(name in str(caught.value) for name in ("retain_uids", "dates=full", "retain_device_identity"))


def test_stricter_and_equal_runs_are_accepted():
    env = {"RELAY_DEID_OPTIONS": '{"retain_safe_private": true, "dates": "full"}'}
    run = resolve(env, {"deid_options": {"dates": "remove", "retain_safe_private": False,
                                         "quarantine_burned_in": True, "quarantine_modalities": ["US", "MG"]},
                        "deidentify": True})
    assert run.deid["dates"] == "remove" and run.deid["retain_safe_private"] is False
    # Restating the deployment's own weaker choices is not a weakening.
    assert resolve(env, {"deid_options": {"dates": "full", "retain_safe_private": True}}).deid["dates"] == "full"
    assert resolve({}, {}).deidentify is True


def test_send_switches_are_not_de_identification():
    run = resolve({"SEND_TO_GOOGLE": "false"}, {"send_gcs": True, "send_orthanc": False})
    assert (run.send_gcs, run.send_orthanc) == (True, False)


def test_a_deployment_without_de_identification_is_not_a_weakening():
    run = resolve({"DEIDENTIFY_RESTFUL": "false"}, {"deidentify": False, "deid_options": {"retain_uids": True}})
    assert run.deidentify is False
    # A run may switch de-identification on where the deployment has it off.
    assert resolve({"DEIDENTIFY_RESTFUL": "false"}, {"deidentify": True}).deidentify is True


def test_the_deployment_may_allow_weaker_runs():
    env = {"RELAY_ALLOW_UNSAFE_OVERRIDES": "true"}
    run = resolve(env, {"deidentify": False})
    assert run.deidentify is False
    assert resolve(env, {"deid_options": {"retain_uids": True}}).deid["retain_uids"] is True
    assert Settings.from_env({}).allow_unsafe_overrides is False


def test_unknown_or_malformed_run_options_fail_before_anything_runs():
    with pytest.raises(ConfigError, match="unknown de-identification option"):
        resolve({}, {"deid_options": {"retain_everything": True}})
    with pytest.raises(ConfigError, match="deid_options param must be an object"):
        resolve({}, {"deid_options": ["retain_uids"]})


def test_an_option_without_a_rule_is_weaker_when_it_changes():
    assert overrides._weaker("some_future_option", "a", "b") is True
    assert overrides._weaker("some_future_option", "a", "a") is False
