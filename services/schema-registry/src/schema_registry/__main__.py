"""Entry point: ``schema-registry`` / ``python -m schema_registry``."""

from __future__ import annotations

import asyncio
import signal

from backbone.settings import load_settings
from backbone.telemetry import configure_logging
from schema_registry.app import SERVICE_NAME, create_app
from schema_registry.settings import RegistrySettings


async def _run() -> None:
    settings = load_settings(RegistrySettings)
    configure_logging(level=settings.log_level, fmt=settings.log_format, service_name=SERVICE_NAME)
    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        await stop.wait()
    finally:
        await app.stop()


def main() -> None:
    """Run until SIGTERM/SIGINT, then drain and exit 0."""
    asyncio.run(_run())


if __name__ == "__main__":
    main()
