"""Entry point: ``event-gateway`` / ``python -m event_gateway``.

Serves the app with uvicorn (uvloop + httptools) on ``BACKBONE_HTTP__HOST``:``BACKBONE_HTTP__PORT``
(default 127.0.0.1:8080). SIGTERM or SIGINT stops accepting connections, lets the requests in
flight finish (up to ``BACKBONE_GATEWAY__GRACEFUL_TIMEOUT_S``), then closes NATS after draining.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
from typing import TYPE_CHECKING

import uvicorn

from backbone.errors import ConfigError
from backbone.settings import load_settings
from backbone.telemetry import configure_logging
from event_gateway.app import SERVICE_NAME, create_app
from event_gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from collections.abc import Iterator


class _Server(uvicorn.Server):
    """uvicorn, but a handled SIGTERM/SIGINT ends the process with status 0.

    uvicorn re-raises the captured signal after its graceful shutdown, so the process would die
    "killed by SIGTERM" even though it stopped cleanly; supervisors read that as a crash.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main() -> None:
    """Start the gateway and serve until SIGTERM/SIGINT."""
    try:
        settings = load_settings(GatewaySettings)
        configure_logging(
            level=settings.log_level,
            fmt=settings.log_format,
            service_name=SERVICE_NAME,
            levels={"uvicorn.access": "WARNING", "nats": "WARNING"},
        )
        # A process of its own: the collector is tuned once the service is built (tune_gc).
        app = create_app(settings, tune_gc_after_start=True)
    except ConfigError as exc:
        print(f"event-gateway: {exc}", file=sys.stderr)  # noqa: T201 - startup failure, no logger yet
        raise SystemExit(2) from None
    config = uvicorn.Config(
        app,
        host=settings.http.host,
        port=settings.http.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_config=None,  # keep the JSON logging set up above
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.gateway.graceful_timeout_s),
        backlog=2048,
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
