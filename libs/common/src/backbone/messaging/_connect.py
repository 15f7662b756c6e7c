"""Connecting to NATS from :class:`backbone.settings.NatsSettings` (auth, TLS, reconnects)."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

import nats
from nats.errors import NoServersError

from backbone.errors import ConfigError, PublishError

if TYPE_CHECKING:
    from nats.aio.client import Client

    from backbone.settings import NatsSettings

log = logging.getLogger(__name__)


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if not tls.enabled:
        return None
    try:
        context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH,
            cafile=str(tls.ca_file) if tls.ca_file else None,
        )
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load NATS TLS material: {exc}", variable="BACKBONE_NATS__TLS__CA_FILE"
        ) from exc
    return context


def connect_options(settings: NatsSettings, *, name: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` built from settings."""
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": name or settings.name,
        "connect_timeout": settings.connect_timeout_s,
        "reconnect_time_wait": settings.reconnect_wait_s,
        "max_reconnect_attempts": settings.max_reconnect_attempts,
        # Keep publishing through short outages: nats-py buffers while reconnecting.
        "pending_size": 8 * 1024 * 1024,
    }
    if settings.user is not None and settings.password is not None:
        options["user"] = settings.user
        options["password"] = settings.password.get_secret_value()
    if settings.token is not None:
        options["token"] = settings.token.get_secret_value()
    if settings.creds_file is not None:
        options["user_credentials"] = str(settings.creds_file)
    if settings.nkey_seed_file is not None:
        options["nkeys_seed"] = str(settings.nkey_seed_file)
    context = _tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


async def _log_error(exc: Exception) -> None:
    log.warning("nats connection error: %s", exc)


async def _log_disconnect() -> None:
    # Also called on a deliberate close, so not a warning by itself; errors are logged above.
    log.info("nats disconnected")


async def _log_reconnect() -> None:
    log.info("nats reconnected")


async def connect(settings: NatsSettings, *, name: str | None = None) -> Client:
    """Connect to NATS, logging disconnects and reconnects.

    Raises:
        PublishError: when no server can be reached at start (later outages reconnect).
    """
    try:
        return await nats.connect(
            **connect_options(settings, name=name),
            error_cb=_log_error,
            disconnected_cb=_log_disconnect,
            reconnected_cb=_log_reconnect,
        )
    except (NoServersError, OSError, TimeoutError) as exc:
        raise PublishError(
            f"cannot reach NATS at {', '.join(settings.servers)}: {exc!r} "
            "(is the stack running? `backbone up` / BACKBONE_NATS__SERVERS)"
        ) from exc
