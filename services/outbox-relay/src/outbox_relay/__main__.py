"""Entry point: `outbox-relay` / `python -m outbox_relay`."""

from __future__ import annotations

import asyncio
import sys

from backbone.errors import BackboneError
from outbox_relay.app import create_app


def main() -> None:
    """Run the relay until SIGTERM/SIGINT; configuration errors exit with status 2."""
    try:
        app = create_app()
    except BackboneError as exc:
        sys.stderr.write(f"outbox-relay: {exc}\n")
        raise SystemExit(2) from None
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
