"""Entry point: ``anomaly-detector`` / ``python -m anomaly_detector``."""

from __future__ import annotations

from anomaly_detector.app import create_app
from anomaly_detector.settings import SERVICE_NAME
from backbone.service import service_main


def main() -> None:
    """Run the detector until SIGTERM/SIGINT; configuration errors exit with status 2."""
    service_main(SERVICE_NAME, create_app)


if __name__ == "__main__":
    main()
