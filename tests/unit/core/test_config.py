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


def test_secrets_hidden_in_every_rendering_and_readable_where_used():
    s = Settings.from_env({"RELAY_SECRET_KEY": "s3cr3t-key", "RELAY_IDENTIFIER_TOKEN": "tok-987654",
                           "ORTHANC_PASSWORD": "pw-123456"})
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert not any(secret in text for secret in ("s3cr3t-key", "tok-987654", "pw-123456"))
    assert s.secret_key.get_secret_value() == "s3cr3t-key"
    assert s.orthanc_password.get_secret_value() == "pw-123456"


def test_settings_read_only_the_mapping_given(monkeypatch):
    """``Settings()`` is the defaults; ``from_env(env)`` reads ``env`` and nothing else; ``from_env()`` the process."""
    monkeypatch.setenv("RELAY_INBOX", "/from/the/shell")
    assert str(Settings().inbox) == "/data/inbox"
    assert str(Settings.from_env({}).inbox) == "/data/inbox"
    assert str(Settings.from_env().inbox) == "/from/the/shell"


def test_bad_number_names_the_variable_and_overrides_are_validated():
    with pytest.raises(ConfigError, match="RELAY_STABLE_SECONDS"):
        Settings.from_env({"RELAY_STABLE_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="RELAY_SEND_ATTEMPTS"):
        Settings().with_overrides(send_attempts="many")
    assert Settings().with_overrides(send_attempts="2").send_attempts == 2


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
