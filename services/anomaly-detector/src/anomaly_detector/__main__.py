"""Entry point: `anomaly-detector` / `python -m anomaly_detector`."""


def main() -> None:
    """Start the service (wired in its issue)."""
    raise SystemExit("anomaly-detector: not wired yet")


if __name__ == "__main__":
    main()
