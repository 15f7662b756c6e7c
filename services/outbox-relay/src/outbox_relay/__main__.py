"""Entry point: `outbox-relay` / `python -m outbox_relay`."""

from __future__ import annotations

from backbone.service import service_main
from outbox_relay.app import create_app
from outbox_relay.settings import SERVICE_NAME


def main() -> None:
    """Run the relay until SIGTERM/SIGINT; configuration errors exit with status 2."""
    service_main(SERVICE_NAME, create_app)


if __name__ == "__main__":
    main()
