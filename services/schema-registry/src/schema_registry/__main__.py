"""Entry point: ``schema-registry`` / ``python -m schema_registry``."""

from __future__ import annotations

from backbone.service import service_main
from schema_registry.app import SERVICE_NAME, create_app


def main() -> None:
    """Run until SIGTERM/SIGINT, then drain and exit 0; configuration errors exit with status 2."""
    service_main(SERVICE_NAME, lambda: create_app(install_signal_handlers=True))


if __name__ == "__main__":
    main()
