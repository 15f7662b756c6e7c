"""Entry point: ``anomaly-detector`` / ``python -m anomaly_detector``."""

from __future__ import annotations

import asyncio
import sys

from anomaly_detector.app import create_app
from backbone.errors import BackboneError


def main() -> None:
    """Run the detector until SIGTERM/SIGINT; configuration errors exit with status 2."""
    try:
        app = create_app()
    except BackboneError as exc:
        sys.stderr.write(f"anomaly-detector: {exc}\n")
        raise SystemExit(2) from None
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
