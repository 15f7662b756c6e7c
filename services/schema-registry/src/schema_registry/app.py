"""Assembly of the registry process: the KV-backed store and micro endpoints in the runtime."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Self

from nats import micro

from backbone.schemas import REGISTRY_QUEUE_GROUP, SchemaStore
from backbone.service import ServiceApp, ServiceRuntime, load_service_settings
from backbone.telemetry import default_instance_id
from schema_registry.handlers import add_endpoints
from schema_registry.service import RegistryService
from schema_registry.settings import RegistrySettings

if TYPE_CHECKING:
    from nats.micro.service import Service

    from backbone.service import ServiceContext

_log = logging.getLogger(__name__)

SERVICE_NAME: Final = "schema-registry"
MICRO_NAME: Final = "backbone-schema-registry"
MICRO_VERSION: Final = "0.1.0"


class RegistryApp(ServiceApp[RegistrySettings]):
    """One replica of the registry. ``await start()``, then ``await stop()`` (drains).

    A process runs :meth:`run` instead (until SIGTERM/SIGINT when ``install_signal_handlers``).
    The registry publishes no metrics snapshots: its numbers are on ``/metrics``.

    Args:
        settings: The process settings.
        with_ops_server: Serve ``/livez``, ``/readyz`` and ``/metrics`` (off in most tests).
        install_signal_handlers: Stop on SIGTERM/SIGINT (the process entry point).
    """

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        with_ops_server: bool = True,
        install_signal_handlers: bool = False,
    ) -> None:
        self.instance = settings.registry.instance or default_instance_id()
        self.service: Service | None = None
        self.registry: RegistryService | None = None
        super().__init__(
            ServiceRuntime(
                SERVICE_NAME,
                settings,
                readiness={"endpoints": lambda: self.service is not None},
                ops_server=with_ops_server,
                handle_signals=install_signal_handlers,
                instance=self.instance,
                connection_name=f"{SERVICE_NAME}:{self.instance}",
                drain_timeout_s=settings.registry.drain_timeout_s,
            )
        )

    async def _serve(self, ctx: ServiceContext[RegistrySettings]) -> None:
        """Bind the KV bucket (created when missing) and start answering."""
        store = await SchemaStore.open(
            ctx.js,
            max_schema_bytes=self.settings.registry.max_schema_bytes,
            max_attempts=self.settings.registry.max_attempts,
        )
        self.registry = RegistryService(store)
        service = await micro.add_service(
            ctx.nc,
            name=MICRO_NAME,
            version=MICRO_VERSION,
            description="Backbone schema registry: JSON Schemas per CloudEvents type",
            queue_group=REGISTRY_QUEUE_GROUP,
            metadata={"instance": self.instance},
        )
        await add_endpoints(service, self.registry, metrics=self.metrics)
        await ctx.nc.flush()
        self.service = service
        _log.info("schema registry serving", extra={"instance": self.instance})

    async def start(self) -> None:
        """Connect, bind the KV bucket and start answering."""
        ctx = await self.runtime.start()
        if ctx is None:
            return
        try:
            await self._serve(ctx)
        except BaseException:
            await self.runtime.stop()
            raise

    async def stop(self) -> None:
        """Graceful stop: drain (in-flight requests are answered, no new ones taken), close."""
        # drain() unsubscribes every endpoint, lets queued requests finish and reply, then
        # closes; other replicas in the queue group take the new requests meanwhile.
        await self.runtime.stop()

    async def main(self, ctx: ServiceContext[RegistrySettings]) -> None:
        """Answer requests until a stop is requested."""
        await self._serve(ctx)
        await ctx.stopping.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def create_app(
    settings: RegistrySettings | None = None,
    *,
    with_ops_server: bool = True,
    install_signal_handlers: bool = False,
) -> RegistryApp:
    """Build (not start) a registry replica; settings default to the environment."""
    if settings is None:
        settings = load_service_settings(RegistrySettings, service_name=SERVICE_NAME)
    return RegistryApp(
        settings,
        with_ops_server=with_ops_server,
        install_signal_handlers=install_signal_handlers,
    )
