"""Errors of the detection core, rooted at :class:`backbone.errors.BackboneError`."""

from __future__ import annotations

from backbone.errors import BackboneError, ConfigError


class DetectionError(BackboneError):
    """A detector was used in a way it cannot handle (e.g. a vector of the wrong width)."""


class DetectorConfigError(ConfigError):
    """A detector configuration value is out of range.

    Attributes:
        variable: The configuration field at fault.
    """
