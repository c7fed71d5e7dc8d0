import pytest

from dicom_relay.config import ConfigError, Settings


def test_sendit_switches_and_defaults():
    s = Settings.from_env({"SEND_TO_ORTHANC": "false", "SEND_TO_GOOGLE": "1", "DEIDENTIFY_RESTFUL": "yes"})
    assert (s.send_orthanc, s.send_gcs, s.deidentify) == (False, True, True)
    assert Settings.from_env({}).identifier_url == ""


def test_bad_switch_names_the_setting():
    with pytest.raises(ConfigError, match="SEND_TO_GOOGLE"):
        Settings.from_env({"SEND_TO_GOOGLE": "perhaps"})


def test_secrets_are_not_in_repr():
    s = Settings.from_env({"RELAY_SECRET_KEY": "s3cr3t-key", "ORTHANC_PASSWORD": "pw-123456"})
    assert "s3cr3t-key" not in repr(s) and "pw-123456" not in repr(s)


def test_overrides_keep_configured_value_for_none():
    s = Settings.from_env({"SEND_TO_GOOGLE": "true"})
    assert s.with_overrides(send_gcs=None).send_gcs is True
    assert s.with_overrides(send_gcs=False).send_gcs is False
    with pytest.raises(ConfigError):
        s.with_overrides(nonsense=1)


def test_blank_switch_means_default_not_false():
    assert Settings.from_env({"DEIDENTIFY_RESTFUL": ""}).deidentify is True


def test_deid_options_from_configuration_and_per_run():
    from dicom_relay.pipeline import RunOptions

    s = Settings.from_env({"RELAY_DEID_OPTIONS": '{"retain_safe_private": true, "dates": "full"}'})
    merged = RunOptions.resolve(s, {"deid_options": {"dates": "remove"}}).deid
    assert merged == {"retain_safe_private": True, "dates": "remove", "pixels": "clean"}
    with pytest.raises(ConfigError, match="RELAY_DEID_OPTIONS"):
        Settings.from_env({"RELAY_DEID_OPTIONS": "[1, 2]"})


def test_pixel_policy_from_configuration_and_stricter_per_run():
    from dicom_relay.pipeline import RunOptions

    assert Settings.from_env({}).pixel_policy == "clean"
    s = Settings.from_env({"RELAY_PIXEL_POLICY": "All-Text"})
    assert RunOptions.resolve(s).deid["pixels"] == "all-text"
    assert RunOptions.resolve(s, {"pixel_policy": "hold"}).deid["pixels"] == "hold"
    for weaker in ({"pixel_policy": "clean"}, {"deid_options": {"pixels": "clean"}}):
        with pytest.raises(ConfigError, match="weaker than the deployment's 'all-text'"):
            RunOptions.resolve(s, weaker)
    # pixels in RELAY_DEID_OPTIONS counts as the deployment's too: the stricter of the two wins.
    both = Settings.from_env({"RELAY_PIXEL_POLICY": "clean", "RELAY_DEID_OPTIONS": '{"pixels": "hold"}'})
    assert RunOptions.resolve(both).deid["pixels"] == "hold"
    with pytest.raises(ConfigError, match="RELAY_PIXEL_POLICY"):
        Settings.from_env({"RELAY_PIXEL_POLICY": "off"})
