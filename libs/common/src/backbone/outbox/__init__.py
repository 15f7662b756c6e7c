"""Transactional outbox: events written in your database transaction, published by a relay.

An application that changes its database and emits an event must never do one without the
other. :func:`enqueue` stores the CloudEvent (already encoded as the NATS message, with
``Nats-Msg-Id`` = its dedup id) in ``backbone_outbox`` inside the caller's transaction; the
relay (:class:`OutboxRelay`, run by the ``outbox-relay`` service) publishes committed rows to
JetStream and deletes them in the transaction that claimed them::

    async with conn.transaction():
        await conn.execute("UPDATE accounts SET ...")
        await outbox.enqueue(conn, event, key=account_id)   # nothing published on rollback

Guarantees:

* **No loss, no duplicates in the stream**: rows leave the table only after their PubAck, in
  the claiming transaction; a crash re-publishes, and JetStream drops the repeat (same
  ``Nats-Msg-Id`` within the duplicate window, 2 min by default).
* **Per-key commit order with any number of relays**: ``enqueue`` locks the key for the rest of
  the transaction (``pg_advisory_xact_lock``), so same-key transactions draw ids in commit
  order; keys hash into :data:`PARTITIONS` partitions, each owned by one relay through a
  session advisory lock, and published oldest id first. A dead relay's partitions move to the
  others at their next rebalance (``rebalance_interval_s``, 1 s); a frozen one's after
  ``session_timeout_s``.
* **Poison rows** (no stream for the subject, too large, rejected by JetStream) move to
  ``backbone_outbox_dead`` with the error; :func:`retry_dead` puts them back.

Schema changes are versioned SQL files in ``backbone/outbox/migrations`` applied by
:func:`migrate` (``backbone outbox migrate``, and every relay at start).
"""

from backbone.outbox._admin import (
    BACKLOG_COUNT_CAP,
    DeadRow,
    OutboxStatus,
    list_dead,
    outbox_status,
    retry_dead,
)
from backbone.outbox._enqueue import OutboxRecord, build_record, enqueue, enqueue_many, enqueue_sync
from backbone.outbox._errors import MigrationError, NotInTransactionError, OutboxError
from backbone.outbox._migrations import Migration, migrate, migrate_sync, migrations
from backbone.outbox._partitions import fair_share
from backbone.outbox._relay import OutboxRelay, RelayConfig, RelayStats
from backbone.outbox._settings import OutboxSettings, PostgresSettings
from backbone.outbox._sql import (
    DEAD_TABLE,
    LOCK_CLASS_KEY,
    LOCK_CLASS_MEMBER,
    LOCK_CLASS_PARTITION,
    NOTIFY_CHANNEL,
    OUTBOX_TABLE,
    PARTITIONS,
)

__all__ = [
    "BACKLOG_COUNT_CAP",
    "DEAD_TABLE",
    "LOCK_CLASS_KEY",
    "LOCK_CLASS_MEMBER",
    "LOCK_CLASS_PARTITION",
    "NOTIFY_CHANNEL",
    "OUTBOX_TABLE",
    "PARTITIONS",
    "DeadRow",
    "Migration",
    "MigrationError",
    "NotInTransactionError",
    "OutboxError",
    "OutboxRecord",
    "OutboxRelay",
    "OutboxSettings",
    "OutboxStatus",
    "PostgresSettings",
    "RelayConfig",
    "RelayStats",
    "build_record",
    "enqueue",
    "enqueue_many",
    "enqueue_sync",
    "fair_share",
    "list_dead",
    "migrate",
    "migrate_sync",
    "migrations",
    "outbox_status",
    "retry_dead",
]
