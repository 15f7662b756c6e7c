"""Errors of the telemetry package."""

from __future__ import annotations

from backbone.errors import BackboneError


class TelemetryError(BackboneError, ValueError):
    """Telemetry was misconfigured (bad metric name, conflicting instrument, bad endpoint)."""
