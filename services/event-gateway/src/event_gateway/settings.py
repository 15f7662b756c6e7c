"""Settings of the event gateway: the common Backbone settings plus a ``gateway`` section.

Every value has an environment variable ``BACKBONE_GATEWAY__<NAME>`` (nested with ``__``), e.g.
``BACKBONE_GATEWAY__DEV_KEY_FILE=.backbone/gateway-dev-key`` or
``BACKBONE_GATEWAY__RATE_LIMIT__PER_KEY_PER_S=500``. Mappings and lists take JSON
(``BACKBONE_GATEWAY__PII__POLICY='{"github": "mask"}'``). The HTTP listener is the common
``BACKBONE_HTTP__HOST`` / ``BACKBONE_HTTP__PORT`` (default port 8080 for this service).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from backbone.settings import BackboneSettings, HttpSettings

PiiMode = Literal["off", "detect", "mask"]
UnknownTypeAction = Literal["accept", "reject"]

DEFAULT_PORT = 8080
_HOOK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# 1 MiB is the NATS default max_payload and the streams' max_msg_size; the event (data plus
# attributes in headers) must stay below it with room for the dedup/stream/trace headers.
_DEFAULT_MAX_EVENT_BYTES = 512 * 1024


class ApiKeyEntry(BaseModel):
    """One API key as configured: never the key itself, only its SHA-256.

    Attributes:
        name: Who holds the key (metrics label, rate-limit bucket, logs).
        sha256: Hex SHA-256 of the key (``printf %s "$KEY" | sha256sum``).
        scopes: Event type prefixes the key may publish (``mcp``, ``claude.session``); ``*``
            means every type. A prefix matches the type itself and types below it.
    """

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[str] = Field(default_factory=lambda: ["*"])


class RateLimitSettings(BaseModel):
    """Token buckets in front of JetStream (requests, not events)."""

    enabled: bool = True
    per_key_per_s: float = Field(default=1000.0, gt=0)
    per_key_burst: float | None = Field(default=None, ge=1)
    global_per_s: float = Field(default=20000.0, gt=0)
    global_burst: float | None = Field(default=None, ge=1)
    max_keys: int = Field(default=10_000, ge=1)


class BreakerSettings(BaseModel):
    """The circuit breaker around JetStream publishing (opens on failed/unanswered publishes)."""

    failure_rate_threshold: float = Field(default=50.0, gt=0, le=100)
    minimum_calls: int = Field(default=10, ge=1)
    sliding_window_size: int = Field(default=50, ge=1)
    wait_in_open_s: float = Field(default=5.0, ge=0)


class PiiSettings(BaseModel):
    """PII masking policy: mode per event type prefix, longest prefix wins."""

    default_mode: PiiMode = "off"
    policy: dict[str, PiiMode] = Field(default_factory=dict)


class WebhookHookSettings(BaseModel):
    """A generic webhook sender at ``/v1/webhooks/<name>``.

    Attributes:
        secret: HMAC secret shared with the sender.
        signature_header: Header carrying the signature.
        signature_prefix: Text before the hex digest in that header (``sha256=``), or empty.
        algorithm: HMAC digest.
        type_prefix: Event types are ``<type_prefix>.<event>``; must start with
            ``webhook.<name>`` (default exactly that).
        event_header: Header naming the event (its value becomes the last type token);
            ``received`` when unset or absent.
        id_header: Header with a delivery id (redeliveries deduplicate); without it the id is
            the SHA-256 of the body, so identical deliveries deduplicate.
        source: CloudEvents ``source``; default ``/webhooks/<name>``.
    """

    secret: SecretStr
    signature_header: str = "X-Signature-256"
    signature_prefix: str = "sha256="
    algorithm: Literal["sha256", "sha1", "sha512"] = "sha256"
    type_prefix: str | None = None
    event_header: str | None = None
    id_header: str | None = None
    source: str | None = None


class TailSettings(BaseModel):
    """``GET /v1/events/stream`` (Server-Sent Events)."""

    heartbeat_s: float = Field(default=15.0, gt=0)
    max_clients: int = Field(default=100, ge=1)


class GatewaySection(BaseModel):
    """The ``gateway`` section (``BACKBONE_GATEWAY__...``)."""

    api_keys_file: Path | None = Field(
        default=None, description="YAML: keys: [{name, sha256, scopes}]"
    )
    api_keys: list[ApiKeyEntry] = Field(default_factory=list, description="JSON list, as in file")
    dev_key_file: Path | None = Field(
        default=None, description="plaintext dev key written by `backbone up` (all scopes)"
    )
    allow_unauthenticated: bool = Field(
        default=False, description="only honoured when bound to a loopback address"
    )
    max_event_bytes: int = Field(default=_DEFAULT_MAX_EVENT_BYTES, ge=1024, le=1_000_000)
    max_batch_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_batch_events: int = Field(default=1000, ge=1)
    max_in_flight_events: int = Field(default=20_000, ge=1)
    publish_timeout_s: float = Field(default=2.0, gt=0)
    publish_attempts: int = Field(default=2, ge=1)
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After when JetStream is down")
    schema_validation: bool = True
    schema_wait_ready_s: float = Field(default=5.0, ge=0)
    unknown_types: dict[str, UnknownTypeAction] = Field(
        default_factory=dict, description='types without a schema, e.g. {"*": "accept"}'
    )
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)
    github_secret: SecretStr | None = None
    github_secret_file: Path | None = None
    webhooks: dict[str, WebhookHookSettings] = Field(default_factory=dict)
    tail: TailSettings = Field(default_factory=TailSettings)
    graceful_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("webhooks")
    @classmethod
    def _hook_names(cls, value: dict[str, WebhookHookSettings]) -> dict[str, WebhookHookSettings]:
        for name, hook in value.items():
            if name == "github" or not _HOOK_NAME.match(name):
                msg = f"webhook name {name!r} must match [a-z0-9][a-z0-9_-]* and not be 'github'"
                raise ValueError(msg)
            prefix = hook.type_prefix or f"webhook.{name}"
            if prefix != f"webhook.{name}" and not prefix.startswith(f"webhook.{name}."):
                msg = f"webhook {name!r}: type_prefix must be under 'webhook.{name}'"
                raise ValueError(msg)
        return value


class GatewaySettings(BackboneSettings):
    """Everything the gateway process reads from its environment."""

    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=DEFAULT_PORT))
    gateway: GatewaySection = Field(default_factory=GatewaySection)
