"""The relay process: the outbox relay loops inside Backbone's service runtime."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from backbone.outbox import OutboxRelay
from backbone.service import ServiceApp, ServiceRuntime, load_service_settings
from outbox_relay.service import StatusGauges
from outbox_relay.settings import SERVICE_NAME, Settings

if TYPE_CHECKING:
    from backbone.service import ServiceContext


class RelayApp(ServiceApp[Settings]):
    """One relay replica. ``await run()`` until SIGTERM/SIGINT or :meth:`request_stop`.

    Shutdown order (see :mod:`backbone.service`): stop claiming (the batch in flight is
    published and committed), stop reporting, close the status connection, drain NATS, stop the
    ops server.

    Args:
        settings: The process settings.
        install_signal_handlers: Stop on SIGTERM/SIGINT (off in tests that embed the app).
    """

    def __init__(self, settings: Settings, *, install_signal_handlers: bool = True) -> None:
        super().__init__(
            ServiceRuntime(
                SERVICE_NAME,
                settings,
                readiness={"postgres": self._ready_postgres},
                handle_signals=install_signal_handlers,
            )
        )
        self.relays: list[OutboxRelay] = []

    def _ready_postgres(self) -> bool:
        return bool(self.relays) and all(relay.postgres_ok for relay in self.relays)

    async def main(self, ctx: ServiceContext[Settings]) -> None:
        """Run the relay loops until stopped."""
        settings = ctx.settings
        dsn = settings.postgres.dsn_value()
        tracer = ctx.telemetry.tracer("backbone.outbox")
        self.relays = [
            OutboxRelay(
                dsn=dsn,
                nc=ctx.nc,
                catalog=ctx.catalog,
                config=settings.outbox,
                metrics=ctx.metrics,
                tracer=tracer,
                name=SERVICE_NAME,
            )
            for _ in range(settings.workers)
        ]
        for relay in self.relays:
            ctx.on_stop(relay.request_stop)
        gauges = StatusGauges(dsn, self.relays)
        ctx.add_cleanup(gauges.close)
        for name, gauge in gauges.gauges().items():
            ctx.add_gauge(name, gauge)
        await asyncio.gather(*(relay.run() for relay in self.relays))


def create_app(
    settings: Settings | None = None, *, install_signal_handlers: bool = True
) -> RelayApp:
    """Build the relay app; settings default to the environment (``BACKBONE_*``).

    Raises:
        ConfigError: A setting is invalid (names the variable).
    """
    if settings is None:
        settings = load_service_settings(Settings, service_name=SERVICE_NAME)
    return RelayApp(settings, install_signal_handlers=install_signal_handlers)
