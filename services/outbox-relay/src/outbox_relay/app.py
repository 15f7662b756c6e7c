"""The relay process: NATS + PostgreSQL relay loop, ops endpoint, metrics snapshots, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from backbone.messaging import Publisher, load_catalog
from backbone.ops import OpsServer
from backbone.outbox import OutboxRelay
from backbone.settings import load_settings
from backbone.telemetry import Metrics, MetricsReporter, configure_logging, setup_telemetry
from outbox_relay.service import StatusGauges, connect_with_backoff
from outbox_relay.settings import SERVICE_NAME, Settings

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)


class RelayApp:
    """One relay replica. ``await run()`` until SIGTERM/SIGINT or :meth:`request_stop`.

    Shutdown order: stop claiming (the batch in flight is published and committed), stop
    reporting, close NATS (flushing), stop the ops server.

    Args:
        settings: The process settings.
        install_signal_handlers: Stop on SIGTERM/SIGINT (off in tests that embed the app).
    """

    def __init__(self, settings: Settings, *, install_signal_handlers: bool = True) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.relays: list[OutboxRelay] = []
        self.ops: OpsServer | None = None
        self.reporter: MetricsReporter | None = None
        self.nc: Client | None = None
        self._install_signals = install_signal_handlers
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.set()
        for relay in self.relays:
            relay.request_stop()

    def _ready_nats(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def _ready_postgres(self) -> bool:
        return bool(self.relays) and all(relay.postgres_ok for relay in self.relays)

    async def run(self) -> None:
        """Serve until stopped."""
        settings = self.settings
        telemetry = setup_telemetry(settings, service_name=SERVICE_NAME)
        if self._install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        catalog = load_catalog(settings.streams_file)
        self.ops = OpsServer(
            host=settings.http.host,
            port=settings.http.port,
            metrics=self.metrics,
            readiness={"nats": self._ready_nats, "postgres": self._ready_postgres},
        )
        await self.ops.start()
        log.info("outbox-relay ops endpoint on %s", self.ops.url)
        gauges: StatusGauges | None = None
        try:
            self.nc = await connect_with_backoff(settings.nats, name=SERVICE_NAME, stop=self._stop)
            if self.nc is None:
                return
            dsn = settings.postgres.dsn_value()
            self.relays = [
                OutboxRelay(
                    dsn=dsn,
                    nc=self.nc,
                    catalog=catalog,
                    config=settings.outbox,
                    metrics=self.metrics,
                    tracer=telemetry.tracer("backbone.outbox"),
                    name=SERVICE_NAME,
                )
                for _ in range(settings.workers)
            ]
            if self._stop.is_set():
                self.request_stop()
            gauges = StatusGauges(dsn, self.relays)
            if settings.telemetry.publish_metrics:
                publisher = Publisher(self.nc, catalog=catalog)
                self.reporter = MetricsReporter(
                    self.metrics,
                    service=SERVICE_NAME,
                    publish=publisher.publish,
                    interval_s=settings.telemetry.metrics_interval_s,
                    instance=telemetry.instance_id,
                    gauges=gauges.gauges(),
                )
                self.reporter.start()
            await asyncio.gather(*(relay.run() for relay in self.relays))
        finally:
            await self._shutdown(gauges)
            telemetry.shutdown()

    async def _shutdown(self, gauges: StatusGauges | None) -> None:
        if self.reporter is not None:
            await self.reporter.stop()
        if gauges is not None:
            await gauges.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.ops is not None:
            await self.ops.stop()


def create_app(
    settings: Settings | None = None, *, install_signal_handlers: bool = True
) -> RelayApp:
    """Build the relay app; settings default to the environment (``BACKBONE_*``).

    Raises:
        ConfigError: A setting is invalid (names the variable).
    """
    if settings is None:
        settings = load_settings(Settings)
        configure_logging(
            level=settings.log_level, fmt=settings.log_format, service_name=SERVICE_NAME
        )
    return RelayApp(settings, install_signal_handlers=install_signal_handlers)
