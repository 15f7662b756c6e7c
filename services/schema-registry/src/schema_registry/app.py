"""Assembly of the registry process: NATS, the KV-backed store, micro endpoints, ops server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Final, Self

from nats import micro

from backbone.messaging import connect
from backbone.ops import OpsServer
from backbone.schemas import REGISTRY_QUEUE_GROUP, SchemaStore
from backbone.settings import load_settings
from backbone.telemetry import Metrics
from schema_registry.handlers import add_endpoints
from schema_registry.service import RegistryService
from schema_registry.settings import RegistrySettings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.micro.service import Service

_log = logging.getLogger(__name__)

SERVICE_NAME: Final = "schema-registry"
MICRO_NAME: Final = "backbone-schema-registry"
MICRO_VERSION: Final = "0.1.0"


class RegistryApp:
    """One replica of the registry. ``await start()``, then ``await stop()`` (drains).

    Args:
        settings: The process settings.
        with_ops_server: Serve ``/livez``, ``/readyz`` and ``/metrics`` (off in most tests).
    """

    def __init__(self, settings: RegistrySettings, *, with_ops_server: bool = True) -> None:
        self.settings = settings
        self.with_ops_server = with_ops_server
        self.metrics = Metrics()
        self.instance = settings.registry.instance or f"{socket.gethostname()}-{os.getpid()}"
        self.nc: Client | None = None
        self.service: Service | None = None
        self.registry: RegistryService | None = None
        self.ops: OpsServer | None = None

    async def start(self) -> None:
        """Connect, bind the KV bucket (created when missing) and start answering."""
        self.nc = await connect(self.settings.nats, name=f"{SERVICE_NAME}:{self.instance}")
        store = await SchemaStore.open(
            self.nc.jetstream(),
            max_schema_bytes=self.settings.registry.max_schema_bytes,
            max_attempts=self.settings.registry.max_attempts,
        )
        self.registry = RegistryService(store)
        self.service = await micro.add_service(
            self.nc,
            name=MICRO_NAME,
            version=MICRO_VERSION,
            description="Backbone schema registry: JSON Schemas per CloudEvents type",
            queue_group=REGISTRY_QUEUE_GROUP,
            metadata={"instance": self.instance},
        )
        await add_endpoints(self.service, self.registry, metrics=self.metrics)
        await self.nc.flush()
        if self.with_ops_server:
            nc = self.nc
            self.ops = OpsServer(
                host=self.settings.http.host,
                port=self.settings.http.port,
                metrics=self.metrics,
                readiness={"nats": lambda: nc.is_connected},
            )
            await self.ops.start()
        _log.info("schema registry serving", extra={"instance": self.instance})

    async def stop(self) -> None:
        """Graceful stop: drain (in-flight requests are answered, no new ones taken), close."""
        if self.nc is not None and not self.nc.is_closed:
            # drain() unsubscribes every endpoint, lets queued requests finish and reply, then
            # closes; other replicas in the queue group take the new requests meanwhile.
            try:
                await asyncio.wait_for(self.nc.drain(), self.settings.registry.drain_timeout_s)
            except TimeoutError:
                _log.warning("drain timed out; closing")
                with contextlib.suppress(Exception):
                    await self.nc.close()
        if self.ops is not None:
            await self.ops.stop()
            self.ops = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def create_app(
    settings: RegistrySettings | None = None, *, with_ops_server: bool = True
) -> RegistryApp:
    """Build (not start) a registry replica; settings default to the environment."""
    return RegistryApp(settings or load_settings(RegistrySettings), with_ops_server=with_ops_server)
