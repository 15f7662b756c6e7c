"""Settings shared by every Backbone process.

Values come from keyword arguments, then environment variables with the prefix ``BACKBONE_`` and
``__`` between nested names (``BACKBONE_NATS__SERVERS``, ``BACKBONE_NATS__TLS__CA_FILE``,
``BACKBONE_TELEMETRY__OTLP_ENDPOINT``), then a ``.env`` file. Services subclass
:class:`BackboneSettings` and add their own section (``BACKBONE_GATEWAY__PORT``), so one NATS and
telemetry story serves every process. Nothing is read at import time: call :func:`load_settings`
(or construct the class) where the process starts, and inject the object into factories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from backbone.errors import ConfigError

ENV_PREFIX = "BACKBONE_"
NESTED_DELIMITER = "__"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class TlsSettings(BaseModel):
    """TLS towards NATS. Setting ``ca_file`` alone verifies the server; add cert/key for mTLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            msg = "cert_file and key_file must be set together"
            raise ValueError(msg)
        return self

    @property
    def enabled(self) -> bool:
        """Whether any TLS material is configured."""
        return self.ca_file is not None or self.cert_file is not None


class NatsSettings(BaseModel):
    """How to reach and authenticate to NATS (one auth method at a time)."""

    # NoDecode: the env value is a comma-separated list (or JSON), split by the validator below.
    servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"]
    )
    name: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls: TlsSettings = Field(default_factory=TlsSettings)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    reconnect_wait_s: float = Field(default=0.5, gt=0)
    max_reconnect_attempts: int = Field(default=-1, description="-1 reconnects forever")

    @field_validator("servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:  # noqa: ANN401 - pydantic passes raw input
        # Operators write "nats://a:4222,nats://b:4222" in env files; accept that as well as JSON.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("servers")
    @classmethod
    def _valid_urls(cls, value: list[str]) -> list[str]:
        if not value:
            msg = "at least one server URL is required"
            raise ValueError(msg)
        for url in value:
            scheme, sep, rest = url.partition("://")
            if not sep or scheme not in {"nats", "tls", "ws", "wss"} or not rest:
                msg = f"{url!r} is not a NATS URL (expected nats://host:port)"
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _one_auth_method(self) -> Self:
        methods = [
            name
            for name, present in (
                ("user/password", self.user is not None or self.password is not None),
                ("token", self.token is not None),
                ("creds_file", self.creds_file is not None),
                ("nkey_seed_file", self.nkey_seed_file is not None),
            )
            if present
        ]
        if len(methods) > 1:
            msg = f"choose one NATS auth method, got {', '.join(methods)}"
            raise ValueError(msg)
        if (self.user is None) != (self.password is None):
            msg = "user and password must be set together"
            raise ValueError(msg)
        return self


class TelemetrySettings(BaseModel):
    """OpenTelemetry and metrics. Standard ``OTEL_*`` variables are honoured too."""

    service_name: str | None = None
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP endpoint; unset means no spans are exported"
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] = "grpc"
    metrics_interval_s: float = Field(default=5.0, gt=0)
    publish_metrics: bool = True


class HttpSettings(BaseModel):
    """The operations HTTP endpoint each service serves (/livez, /readyz, /metrics)."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")


class BackboneSettings(BaseSettings):
    """Settings common to every Backbone process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    nats: NatsSettings = Field(default_factory=NatsSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log_level: LogLevel = "INFO"
    log_format: Literal["json", "text"] = "json"
    streams_file: Path | None = Field(
        default=None, description="deploy/streams.yaml; default: the copy found from the cwd"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:  # noqa: ANN401 - pydantic passes raw input
        return value.upper() if isinstance(value, str) else value


SettingsT = TypeVar("SettingsT", bound=BackboneSettings)


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that feeds the field at ``loc`` (``("nats", "servers")``)."""
    return ENV_PREFIX + NESTED_DELIMITER.join(str(part).upper() for part in loc)


def load_settings(cls: type[SettingsT] = BackboneSettings, **overrides: Any) -> SettingsT:  # type: ignore[assignment]  # noqa: ANN401
    """Build settings, turning pydantic's error into a :class:`ConfigError` naming the variable.

    Args:
        cls: The settings class (a service's subclass of :class:`BackboneSettings`).
        **overrides: Values that take precedence over the environment.

    Raises:
        ConfigError: When a value is invalid; ``variable`` is the environment variable at fault.
    """
    try:
        return cls(**overrides)
    except SettingsError as exc:
        # Raised for a nested value that is not valid JSON; pydantic-settings names the field.
        raise ConfigError(f"invalid configuration: {exc}", variable=ENV_PREFIX + "*") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(part for part in first["loc"] if not isinstance(part, int))
        variable = env_name(loc) if loc else ENV_PREFIX + "*"
        problems = "; ".join(
            f"{env_name(tuple(p for p in err['loc'] if not isinstance(p, int)))}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}", variable=variable) from exc
