"""Operating the outbox: status, dead-letter listing and retry (used by the CLI and the relay)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from backbone.outbox._errors import OutboxError
from backbone.outbox._sql import (
    LOCK_CLASS_MEMBER,
    LOCK_CLASS_PARTITION,
    OUTBOX_TABLE,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from psycopg import AsyncConnection

BACKLOG_COUNT_CAP: Final = 1_000_000
"""``backlog`` counts at most this many rows (beyond it, counting would cost more than it tells)."""

_STATUS: Final = (
    "SELECT "
    "(SELECT count(*) FROM "
    "  (SELECT 1 FROM backbone_outbox WHERE published_at IS NULL LIMIT %s) AS b), "
    "(SELECT extract(epoch FROM clock_timestamp() - created_at) FROM backbone_outbox "
    "  WHERE published_at IS NULL ORDER BY id LIMIT 1), "
    "(SELECT count(*) FROM backbone_outbox_dead), "
    "(SELECT count(*) FROM pg_locks l "
    "  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "  AND l.classid::int = %s), "
    "(SELECT count(*) FROM pg_locks l "
    "  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "  AND l.classid::int = %s), "
    "(SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s)"
)
_DEAD_LIST: Final = (
    "SELECT id, subject, event_id, event_type, ordering_key, attempts, error, created_at, dead_at "
    "FROM backbone_outbox_dead ORDER BY id LIMIT %s"
)
# Back to the outbox with a new id (the end of its key's queue) and a fresh attempt count.
_RETRY: Final = (
    "WITH moved AS (DELETE FROM backbone_outbox_dead "
    "  WHERE (%s::bigint[] IS NULL OR id = ANY(%s::bigint[])) "
    "  RETURNING "
    "ordering_key, subject, msg_id, event_id, event_source, event_type, headers, payload, "
    "traceparent, tracestate, "
    "  created_at, attempts, id AS dead_id) "
    "INSERT INTO backbone_outbox ("
    "ordering_key, subject, msg_id, event_id, event_source, event_type, headers, payload, "
    "traceparent, tracestate, "
    "  created_at, attempts) "
    "SELECT "
    "ordering_key, subject, msg_id, event_id, event_source, event_type, headers, payload, "
    "traceparent, tracestate, "
    "  created_at, 0 FROM moved ORDER BY dead_id RETURNING id"
)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """A snapshot of the outbox.

    Attributes:
        backlog: Unpublished rows (capped at :data:`BACKLOG_COUNT_CAP`).
        oldest_age_s: Age of the oldest unpublished row, 0 when there is none.
        dead: Rows in the dead-letter table.
        relays: Live relay loops (claim sessions holding a member lock; a relay process
            runs ``workers`` of them).
        partitions_owned: Partitions owned by some relay (all of them when relays run).
        dead_tuples: ``n_dead_tup`` of the outbox table (statistics, slightly delayed).
    """

    backlog: int
    oldest_age_s: float
    dead: int
    relays: int
    partitions_owned: int
    dead_tuples: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A row the relay could not publish, with the reason.

    Attributes:
        id: Its outbox id (also the dead table's key).
        subject: Target subject.
        event_id: CloudEvent id.
        event_type: CloudEvent type.
        ordering_key: Ordering key.
        attempts: Publish attempts made.
        error: Why it was given up (``ErrorType: message``).
        created_at: When it was enqueued.
        dead_at: When it was moved to the dead table.
    """

    id: int
    subject: str
    event_id: str
    event_type: str
    ordering_key: str
    attempts: int
    error: str
    created_at: datetime
    dead_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (times in ISO 8601)."""
        values = asdict(self)
        values["created_at"] = self.created_at.isoformat()
        values["dead_at"] = self.dead_at.isoformat()
        return values


async def outbox_status(conn: AsyncConnection[Any]) -> OutboxStatus:
    """Backlog, oldest age, dead rows, live relays and owned partitions."""
    cur = await conn.execute(
        _STATUS, (BACKLOG_COUNT_CAP, LOCK_CLASS_MEMBER, LOCK_CLASS_PARTITION, OUTBOX_TABLE)
    )
    row = await cur.fetchone()
    if row is None:  # a SELECT without FROM always returns one row
        raise OutboxError("outbox status query returned no row")
    return OutboxStatus(
        backlog=int(row[0]),
        oldest_age_s=float(row[1] or 0.0),
        dead=int(row[2]),
        relays=int(row[3]),
        partitions_owned=int(row[4]),
        dead_tuples=int(row[5] or 0),
    )


async def list_dead(conn: AsyncConnection[Any], *, limit: int = 100) -> list[DeadRow]:
    """Dead rows, oldest first."""
    cur = await conn.execute(_DEAD_LIST, (limit,))
    return [DeadRow(*row) for row in await cur.fetchall()]


async def retry_dead(conn: AsyncConnection[Any], ids: Sequence[int] | None = None) -> list[int]:
    """Move dead rows back into the outbox (all of them when ``ids`` is None), in one transaction.

    They get new outbox ids, so they are published after what is queued now for their key, with
    the same ``Nats-Msg-Id`` as before.

    Returns:
        The new outbox ids.
    """
    id_list = None if ids is None else list(ids)
    async with conn.transaction():
        cur = await conn.execute(_RETRY, (id_list, id_list))
        return [int(row[0]) for row in await cur.fetchall()]
