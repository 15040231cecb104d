"""edge.config: settings from flags > environment > defaults, every variable cast or refused
by name, secrets kept out of what gets logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import Settings, load_settings
from edge.errors import ConfigError

# every variable the appliance reads, its settings field, a valid text and its value
VARIABLES = [
    ("PIPELINE_URL", "pipeline_url", "reg:5000/t/pipelines/p:v1", "reg:5000/t/pipelines/p:v1"),
    ("OCI_REGISTRY", "oci_registry", "reg:5000", "reg:5000"),
    ("OCI_USERNAME", "oci_username", "robot", "robot"),
    ("OCI_PASSWORD", "oci_password", "hunter2", "hunter2"),
    ("OCI_INSECURE", "oci_insecure", "true", True),
    ("CONFIG_CPUS", "cpus", "4", 4),
    ("DEBUG", "debug", "yes", True),
    ("EDGE_BUNDLE", "edge_bundle", "ZXhhbXBsZQ==", "ZXhhbXBsZQ=="),
    ("PERSIST_DIR", "persist_dir", "/data/edge", Path("/data/edge")),
    ("PORT", "port", "9090", 9090),
    ("HOST", "host", "127.0.0.1", "127.0.0.1"),
    ("MAX_BODY_BYTES", "max_body_bytes", "1048576", 1 << 20),
    ("MAX_CONNECTIONS", "max_connections", "16", 16),
    ("LOG_BUFFER_BYTES", "log_buffer_bytes", "1e6", 1_000_000),
    ("LOG_FSYNC_INTERVAL", "log_fsync_interval", "0.5", 0.5),
    ("EDGE_LOGGING", "logging_enabled", "false", False),
]


def test_defaults_with_an_empty_environment() -> None:
    settings = load_settings({}, {})
    assert settings == Settings(partition=settings.partition)
    assert (settings.cpus, settings.port, settings.host) == (1, 8080, "0.0.0.0")
    assert settings.persist_dir == Path("/persist")
    assert settings.max_body_bytes == 64 << 20 and settings.log_buffer_bytes == 256 << 20
    assert settings.log_fsync_interval == 0.1
    assert settings.logging_enabled is True and settings.debug is False
    assert settings.oci_insecure is None  # auto: plain http to loopback registries only
    assert settings.pipeline_url is None and settings.partition  # the host name


@pytest.mark.parametrize("variable,name,text,value", VARIABLES, ids=[v[0] for v in VARIABLES])
def test_every_variable_is_read_and_cast(variable: str, name: str, text: str, value: Any) -> None:
    settings = load_settings({}, {variable: text})
    assert getattr(settings, name) == value
    assert type(getattr(settings, name)) is type(value)


def test_a_flag_wins_over_the_environment_which_wins_over_the_default() -> None:
    environ = {"PORT": "9000", "CONFIG_CPUS": "3", "EDGE_LOGGING": "true", "DEBUG": "true"}
    settings = load_settings({"port": 7000, "logging_enabled": False, "debug": None}, environ)
    assert settings.port == 7000  # flag
    assert settings.logging_enabled is False  # a False flag is given, not absent
    assert settings.debug is True  # a None flag means "not given": the environment's
    assert settings.cpus == 3  # environment
    assert settings.host == "0.0.0.0"  # default


def test_an_empty_variable_counts_as_unset() -> None:
    assert load_settings({}, {"PORT": "", "PIPELINE_URL": ""}) == load_settings({}, {})


def test_the_process_environment_is_read_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORT", "8181")
    monkeypatch.setenv("PERSIST_DIR", "/tmp/elsewhere")
    settings = load_settings()
    assert settings.port == 8181 and settings.persist_dir == Path("/tmp/elsewhere")


def test_the_partition_comes_only_from_the_caller() -> None:
    assert load_settings({"partition": "store-17"}, {}).partition == "store-17"
    assert load_settings({}, {"PARTITION": "store-17"}).partition != "store-17"


@pytest.mark.parametrize("text", ["1", "true", "TRUE", " yes ", "on"])
@pytest.mark.parametrize("variable,name", [("DEBUG", "debug"), ("OCI_INSECURE", "oci_insecure")])
def test_true_words(variable: str, name: str, text: str) -> None:
    assert getattr(load_settings({}, {variable: text}), name) is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off"])
@pytest.mark.parametrize("variable,name", [("DEBUG", "debug"), ("EDGE_LOGGING", "logging_enabled")])
def test_false_words(variable: str, name: str, text: str) -> None:
    assert getattr(load_settings({}, {variable: text}), name) is False


REFUSED = [
    ("DEBUG", "maybe", "DEBUG must be true or false, not 'maybe'"),
    ("OCI_INSECURE", "2", "OCI_INSECURE must be true or false"),
    ("EDGE_LOGGING", "disabled", "EDGE_LOGGING must be true or false"),
    ("CONFIG_CPUS", "four", "CONFIG_CPUS must be a number, not 'four'"),
    ("CONFIG_CPUS", "0", "CONFIG_CPUS is out of range: '0'"),
    ("CONFIG_CPUS", "-2", "CONFIG_CPUS is out of range"),
    ("CONFIG_CPUS", "1.5", "CONFIG_CPUS must be a whole number, not '1.5'"),
    ("PORT", "65536", "PORT is out of range: '65536'"),
    ("PORT", "8080.5", "PORT must be a whole number"),
    ("PORT", "inf", "PORT must be a whole number, not 'inf'"),
    ("PORT", "nan", "PORT must be a whole number"),
    ("MAX_BODY_BYTES", "64MiB", "MAX_BODY_BYTES must be a number"),
    ("MAX_BODY_BYTES", "1e400", "MAX_BODY_BYTES must be a whole number"),
    ("MAX_CONNECTIONS", "0", "MAX_CONNECTIONS is out of range"),
    ("LOG_BUFFER_BYTES", "-1", "LOG_BUFFER_BYTES is out of range"),
    ("LOG_FSYNC_INTERVAL", "soon", "LOG_FSYNC_INTERVAL must be a number of seconds, not 'soon'"),
    ("LOG_FSYNC_INTERVAL", "61", "LOG_FSYNC_INTERVAL must be between 0 and 60 seconds"),
    ("LOG_FSYNC_INTERVAL", "-0.1", "LOG_FSYNC_INTERVAL must be between 0 and 60 seconds"),
    ("LOG_FSYNC_INTERVAL", "nan", "LOG_FSYNC_INTERVAL must be between 0 and 60 seconds"),
]


@pytest.mark.parametrize("variable,text,message", REFUSED, ids=[f"{v}={t}" for v, t, _ in REFUSED])
def test_a_bad_value_is_refused_naming_the_variable(variable: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({}, {variable: text})
    assert message in str(refused.value)


def test_a_bad_flag_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="PORT is out of range"):
        load_settings({"port": 0}, {"PORT": "8080"})
    with pytest.raises(ConfigError, match="DEBUG must be true or false"):
        load_settings({"debug": "sometimes"}, {})


def test_zero_fsync_interval_means_before_each_answer() -> None:
    assert load_settings({}, {"LOG_FSYNC_INTERVAL": "0"}).log_fsync_interval == 0.0


def test_secrets_never_show_in_repr_or_the_redacted_view() -> None:
    settings = load_settings(
        {}, {"OCI_PASSWORD": "hunter2-secret", "EDGE_BUNDLE": "bundle-secret", "OCI_USERNAME": "u"}
    )
    assert settings.oci_password == "hunter2-secret"  # still there for the code that needs it
    for shown in (repr(settings), str(settings), str(settings.redacted())):
        assert "hunter2-secret" not in shown and "bundle-secret" not in shown
    redacted = settings.redacted()
    assert redacted["oci_password"] == "***" and redacted["edge_bundle"] == "***"
    assert redacted["oci_username"] == "u" and redacted["port"] == 8080
    assert set(redacted) == set(Settings.__dataclass_fields__)


def test_unset_secrets_show_as_unset() -> None:
    redacted = load_settings({}, {}).redacted()
    assert redacted["oci_password"] is None and redacted["edge_bundle"] is None


def test_settings_are_read_once_and_frozen() -> None:
    settings = load_settings({}, {})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
