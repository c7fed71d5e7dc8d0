"""Secrets: a step refuses to start without them, they never show, the identifier service always needs its token."""

import pytest

from dicom_relay.config import ConfigError, Settings, is_placeholder
from dicom_relay.identifiers import LocalProvider

REAL = {"RELAY_SECRET_KEY": "k-8f2b1c9e0d7a6b5c4d3e", "ORTHANC_PASSWORD": "o-91a8b7c6d5e4f3",
        "RELAY_IDENTIFIER_URL": "http://127.0.0.1:8000", "RELAY_IDENTIFIER_TOKEN": "t-0a1b2c3d4e5f6a7b",
        "RELAY_DB_URL": "postgresql://relay:db-7c6b5a4f3e2d1c0b@127.0.0.1:5432/relay"}


@pytest.mark.parametrize("value", ["", "  ", "change-me", "CHANGE-ME", "change-me-to-a-long-random-string",
                                   "changeme", "change_me_please", "<change-me>", "password", "secret", "token"])
def test_placeholders(value):
    assert is_placeholder(value)


def test_real_values_are_not_placeholders():
    assert not any(is_placeholder(v) for v in ("k-8f2b1c9e0d7a6b5c4d3e", "test-secret-key", "Xy9_unchanged"))


def test_real_secrets_pass():
    Settings.from_env(REAL).require_secrets(deidentify=True, send_orthanc=True)


@pytest.mark.parametrize("variable,value", [
    ("RELAY_SECRET_KEY", ""), ("RELAY_SECRET_KEY", "change-me-to-a-long-random-string"),
    ("ORTHANC_PASSWORD", ""), ("ORTHANC_PASSWORD", "change-me"),
    ("RELAY_IDENTIFIER_TOKEN", ""), ("RELAY_IDENTIFIER_TOKEN", "change-me"),
])
def test_each_missing_secret_is_named_never_quoted(variable, value):
    env = {**REAL, variable: value}
    with pytest.raises(ConfigError, match=f"{variable}: empty or a placeholder") as caught:
        Settings.from_env(env).require_secrets(deidentify=True, send_orthanc=True)
    assert "change-me" not in str(caught.value) or value == ""  # the message never quotes the value
    assert all(v not in str(caught.value) for k, v in REAL.items() if k != "RELAY_IDENTIFIER_URL")


def test_placeholder_database_password_is_refused_before_connecting():
    env = {**REAL, "RELAY_DB_URL": "postgresql://relay:change-me@db:5432/relay"}
    with pytest.raises(ConfigError, match="RELAY_DB_URL: empty or a placeholder") as caught:
        Settings.from_env(env).require_db_secret()
    assert "change-me@" not in str(caught.value)
    # Without a password libpq uses ~/.pgpass, PGPASSWORD or peer authentication: accepted.
    Settings.from_env({**REAL, "RELAY_DB_URL": "postgresql://relay@/relay"}).require_db_secret()


def test_secrets_only_needed_where_used():
    # No identifier service: no token needed; no Orthanc send: no Orthanc password.
    env = {**REAL, "RELAY_IDENTIFIER_URL": "", "RELAY_IDENTIFIER_TOKEN": "", "ORTHANC_PASSWORD": ""}
    Settings.from_env(env).require_secrets(deidentify=True, send_orthanc=False)
    with pytest.raises(ConfigError, match="ORTHANC_PASSWORD"):
        Settings.from_env(env).require_secrets(deidentify=True, send_orthanc=True)


def test_database_password_is_in_no_rendering():
    s = Settings.from_env(REAL)
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert "db-7c6b5a4f3e2d1c0b" not in text
    assert "db-7c6b5a4f3e2d1c0b" in s.db_url  # the code that connects still has it
    assert s.with_overrides(stable_seconds=1.0).db_url == s.db_url


def test_local_provider_refuses_an_empty_key():
    with pytest.raises(ValueError, match="RELAY_SECRET_KEY"):
        LocalProvider("")


def test_identifier_service_needs_a_token(monkeypatch, tmp_path):
    from dicom_relay.identifiers.service import PseudonymStore, create_app, main

    store = PseudonymStore(tmp_path / "ids.sqlite")
    try:
        for token in ("", "change-me"):
            with pytest.raises(ValueError, match="RELAY_IDENTIFIER_TOKEN"):
                create_app(store, token)
    finally:
        store.close()
    monkeypatch.delenv("RELAY_IDENTIFIER_TOKEN", raising=False)
    with pytest.raises(SystemExit) as caught:
        main(["--db", str(tmp_path / "ids2.sqlite")])
    assert caught.value.code == 2
