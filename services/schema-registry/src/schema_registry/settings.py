"""Settings of the schema registry: ``BACKBONE_*`` plus the ``BACKBONE_REGISTRY__*`` section."""

from __future__ import annotations

from pydantic import BaseModel, Field

from backbone.schemas import DEFAULT_MAX_SCHEMA_BYTES, SCHEMA_BUCKET
from backbone.settings import BackboneSettings


class RegistrySection(BaseModel):
    """Knobs of the registry (``BACKBONE_REGISTRY__MAX_SCHEMA_BYTES=131072``...)."""

    bucket: str = SCHEMA_BUCKET
    max_schema_bytes: int = Field(default=DEFAULT_MAX_SCHEMA_BYTES, gt=0, le=900_000)
    max_attempts: int = Field(default=32, ge=1, description="lost revision races tolerated")
    drain_timeout_s: float = Field(default=10.0, gt=0)
    instance: str | None = Field(default=None, description="replica name in logs and metadata")


class RegistrySettings(BackboneSettings):
    """Settings of the ``schema-registry`` process."""

    registry: RegistrySection = Field(default_factory=RegistrySection)
