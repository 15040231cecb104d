"""The appliance's settings, read once from the environment (the seed's names) and flags.

Precedence: command-line flag > environment variable > default. Secrets are kept out of
`repr` so that a settings object can be logged.

| variable | flag | default | meaning |
| --- | --- | --- | --- |
| PIPELINE_URL | --pipeline-url | bundle's | `HOST/REPO/pipelines/NAME:V` or `oci-layout:DIR` |
| OCI_REGISTRY | --oci-registry | | registry host the credentials are for |
| OCI_USERNAME | --oci-username | | registry user |
| OCI_PASSWORD | --oci-password | | registry password or token (secret) |
| OCI_INSECURE | --oci-insecure | auto | plain http to the registry (auto: loopback only) |
| CONFIG_CPUS | --cpus | 1 | thread budget for models and request handling |
| DEBUG | --debug | false | more detail in logs (never secrets) |
| EDGE_BUNDLE | --edge-bundle | | base64 bundle from the ops center (secret: holds a token) |
| PERSIST_DIR | --persist-dir | /persist | cache, log buffer, credentials |
| PORT | --port | 8080 | HTTP port |
| GRPC_PORT | --grpc-port | 8081 | Open Inference Protocol gRPC port (0: off) |
| HOST | --host | 0.0.0.0 | address to listen on |
| MAX_BODY_BYTES | --max-body-bytes | 64 MiB | largest request body accepted (30 s to send it) |
| MAX_CONNECTIONS | --max-connections | 256 | open connections at once; past it, 503 |
| LOG_BUFFER_BYTES | --log-buffer-bytes | 256 MiB | cap of the inference log buffer |
| LOG_FSYNC_INTERVAL | --log-fsync-interval | 0.1 | s between log fsyncs (0: before each answer) |
| EDGE_LOGGING | --no-logging | true | log every inference (`false`: benchmarks only) |
| PULL_RETRY_MAX | --pull-retry-max | 60 | longest s between pipeline load retries (from 1 s) |
| PIPELINE_VERIFY_KEYS | --verify-keys | bundle's | PEM public keys the pipeline is signed with |
| SYNC_HEARTBEAT_INTERVAL | --sync-heartbeat-interval | 30 | s between heartbeats (rollouts) |
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

SECRETS = {"oci_password", "edge_bundle"}


@dataclass(frozen=True)
class Settings:
    pipeline_url: str | None = None
    oci_registry: str | None = None
    oci_username: str | None = None
    oci_password: str | None = field(default=None, repr=False)
    oci_insecure: bool | None = None
    cpus: int = 1
    debug: bool = False
    edge_bundle: str | None = field(default=None, repr=False)
    persist_dir: Path = Path("/persist")
    port: int = 8080
    grpc_port: int = 8081
    host: str = "0.0.0.0"
    max_body_bytes: int = 64 << 20
    max_connections: int = 256
    log_buffer_bytes: int = 256 << 20
    log_fsync_interval: float = 0.1
    logging_enabled: bool = True
    pull_retry_max: float = 60.0
    verify_keys: str | None = None  # PEM text, or comma-separated PEM files (edge.signing)
    sync_heartbeat_interval: float = 30.0
    partition: str = field(default_factory=socket.gethostname)

    def redacted(self) -> dict[str, Any]:
        shown = {}
        for f in fields(self):
            value = getattr(self, f.name)
            shown[f.name] = "***" if f.name in SECRETS and value else value
        return shown


_ENV = {
    "pipeline_url": "PIPELINE_URL",
    "oci_registry": "OCI_REGISTRY",
    "oci_username": "OCI_USERNAME",
    "oci_password": "OCI_PASSWORD",
    "oci_insecure": "OCI_INSECURE",
    "cpus": "CONFIG_CPUS",
    "debug": "DEBUG",
    "edge_bundle": "EDGE_BUNDLE",
    "persist_dir": "PERSIST_DIR",
    "port": "PORT",
    "grpc_port": "GRPC_PORT",
    "host": "HOST",
    "max_body_bytes": "MAX_BODY_BYTES",
    "max_connections": "MAX_CONNECTIONS",
    "log_buffer_bytes": "LOG_BUFFER_BYTES",
    "log_fsync_interval": "LOG_FSYNC_INTERVAL",
    "logging_enabled": "EDGE_LOGGING",
    "pull_retry_max": "PULL_RETRY_MAX",
    "verify_keys": "PIPELINE_VERIFY_KEYS",
    "sync_heartbeat_interval": "SYNC_HEARTBEAT_INTERVAL",
}


def load_settings(
    flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Settings from flags (non-None values win) over environment over defaults."""
    env = os.environ if environ is None else environ
    flags = flags or {}
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if flags.get(f.name) is not None:
            raw: Any = flags[f.name]
        elif f.name in _ENV and env.get(_ENV[f.name], "") != "":
            raw = env[_ENV[f.name]]
        else:
            continue
        values[f.name] = _cast(f.name, raw)
    return Settings(**values)


def _cast(name: str, raw: Any) -> Any:
    variable = _ENV.get(name, name)
    if name in ("debug", "logging_enabled", "oci_insecure"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{variable} must be true or false, not {raw!r}")
    if name in ("cpus", "port", "max_body_bytes", "max_connections", "log_buffer_bytes"):
        try:
            value = float(raw)  # "1e6" is a whole number too
        except (TypeError, ValueError):
            raise ConfigError(f"{variable} must be a number, not {raw!r}") from None
        if not value.is_integer():  # fractional, infinite or nan: never silently truncated
            raise ConfigError(f"{variable} must be a whole number, not {raw!r}")
        number = int(value)
        if number <= 0 or (name == "port" and number > 65535):
            raise ConfigError(f"{variable} is out of range: {raw!r}")
        return number
    if name == "grpc_port":
        try:
            number = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{variable} must be a port number (0: off), not {raw!r}") from None
        if not 0 <= number <= 65535:
            raise ConfigError(f"{variable} is out of range (0 to 65535, 0: off): {raw!r}")
        return number
    if name == "log_fsync_interval":
        try:
            seconds = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{variable} must be a number of seconds, not {raw!r}") from None
        if not 0 <= seconds <= 60:
            raise ConfigError(f"{variable} must be between 0 and 60 seconds, not {raw!r}")
        return seconds
    if name in ("pull_retry_max", "sync_heartbeat_interval"):
        try:
            seconds = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{variable} must be a number of seconds, not {raw!r}") from None
        low = 1 if name == "pull_retry_max" else 0.1
        if not low <= seconds <= 3600:
            raise ConfigError(f"{variable} must be between {low} and 3600 seconds, not {raw!r}")
        return seconds
    if name == "persist_dir":
        return Path(raw)
    return str(raw)
