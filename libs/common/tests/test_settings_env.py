import os

import pytest

from backbone.errors import ConfigError
from backbone.settings import BackboneSettings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("BACKBONE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir("/")  # no stray .env file


def test_defaults_point_at_a_local_server():
    settings = load_settings()
    assert settings.nats.servers == ["nats://127.0.0.1:4222"]
    assert settings.log_level == "INFO"


def test_nested_variables_with_double_underscore(monkeypatch):
    monkeypatch.setenv("BACKBONE_NATS__SERVERS", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("BACKBONE_NATS__TLS__CA_FILE", "/etc/ca.pem")
    monkeypatch.setenv("BACKBONE_TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("BACKBONE_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert str(settings.nats.tls.ca_file) == "/etc/ca.pem"
    assert settings.nats.tls.enabled
    assert settings.telemetry.otlp_endpoint == "http://127.0.0.1:4317"
    assert settings.log_level == "DEBUG"


def test_servers_accept_a_json_list(monkeypatch):
    monkeypatch.setenv("BACKBONE_NATS__SERVERS", '["nats://a:1", "tls://b:2"]')
    assert load_settings().nats.servers == ["nats://a:1", "tls://b:2"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BACKBONE_NATS__CONNECT_TIMEOUT_S", "-1"),
        ("BACKBONE_NATS__SERVERS", "http://wrong:80"),
        ("BACKBONE_LOG_LEVEL", "LOUD"),
        ("BACKBONE_HTTP__PORT", "70000"),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.variable == variable
    assert variable in str(info.value)


def test_only_one_auth_method(monkeypatch):
    monkeypatch.setenv("BACKBONE_NATS__TOKEN", "t")
    monkeypatch.setenv("BACKBONE_NATS__USER", "u")
    monkeypatch.setenv("BACKBONE_NATS__PASSWORD", "p")
    with pytest.raises(ConfigError, match="one NATS auth method"):
        load_settings()


def test_user_needs_password_and_cert_needs_key(monkeypatch):
    with pytest.raises(ConfigError, match="user and password"):
        load_settings(nats={"user": "u"})
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        load_settings(nats={"tls": {"cert_file": "/c.pem"}})


def test_secrets_are_not_printed():
    settings = BackboneSettings(nats={"user": "u", "password": "hunter2"})
    assert "hunter2" not in repr(settings)
