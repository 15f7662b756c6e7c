"""Entry point: `schema-registry` / `python -m schema_registry`."""


def main() -> None:
    """Start the service (wired in its issue)."""
    raise SystemExit("schema-registry: not wired yet")


if __name__ == "__main__":
    main()
