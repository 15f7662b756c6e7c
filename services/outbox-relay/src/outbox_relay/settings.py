"""Settings of the relay: Backbone's plus ``postgres`` and ``outbox`` sections.

``BACKBONE_POSTGRES__DSN`` names the database; ``BACKBONE_OUTBOX__BATCH_SIZE``,
``BACKBONE_OUTBOX__POLL_INTERVAL_S``, ``BACKBONE_OUTBOX__REBALANCE_INTERVAL_S``,
``BACKBONE_OUTBOX__RETENTION`` (``delete``/``mark``)... tune the relay (see
:class:`backbone.outbox.RelayConfig`). The partition count is fixed by the schema
(``backbone.outbox.PARTITIONS``).
"""

from __future__ import annotations

from pydantic import Field

from backbone.outbox import PostgresSettings, RelayConfig
from backbone.settings import BackboneSettings

SERVICE_NAME = "outbox-relay"


class Settings(BackboneSettings):
    """Everything the relay reads from the environment.

    Attributes:
        postgres: ``BACKBONE_POSTGRES__DSN``.
        outbox: Relay knobs (``BACKBONE_OUTBOX__*``).
        workers: Relay loops in this process (``BACKBONE_WORKERS``), each with its own claim
            session and share of the partitions: one loop's database round trips overlap the
            other's publishing, which is worth ~30 % throughput on two cores.
    """

    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    outbox: RelayConfig = Field(default_factory=RelayConfig)
    workers: int = Field(default=2, ge=1, le=16)
