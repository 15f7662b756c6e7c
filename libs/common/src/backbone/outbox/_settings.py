"""Settings sections of the outbox (``BACKBONE_POSTGRES__DSN``, ``BACKBONE_OUTBOX__*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from backbone.outbox._relay import RelayConfig
from backbone.settings import BackboneSettings


class PostgresSettings(BaseModel):
    """Where the outbox lives.

    Attributes:
        dsn: libpq connection string or URL (``postgresql://user:pw@host:5432/db``); secret
            because it may carry a password.
    """

    dsn: SecretStr = Field(default=SecretStr("postgresql://postgres@127.0.0.1:54329/postgres"))

    def dsn_value(self) -> str:
        """The DSN in clear, for the driver."""
        return self.dsn.get_secret_value()


class OutboxSettings(BackboneSettings):
    """Backbone settings plus the ``postgres`` and ``outbox`` sections (CLI and relay)."""

    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    outbox: RelayConfig = Field(default_factory=RelayConfig)
