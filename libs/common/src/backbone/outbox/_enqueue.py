"""Writing events into the outbox inside the caller's own transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import trace
from psycopg import pq
from psycopg.types.json import Jsonb

from backbone.events import dedup_id, encode_nats
from backbone.messaging import MSG_ID_HEADER, subject_for
from backbone.outbox._errors import NotInTransactionError
from backbone.telemetry import inject_trace_headers

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg import AsyncConnection, Connection

    from backbone.events import CloudEvent

Mode = Literal["binary", "structured"]

# The key lock is taken in the FROM clause, so the row's id (nextval) is drawn only once the lock
# is held: a second transaction writing the same key gets a larger id and commits later.
_INSERT_LOCKED: Final = (
    "INSERT INTO backbone_outbox (ordering_key, subject, msg_id, event_id, event_source, "
    "  event_type, headers, payload, traceparent, tracestate) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s "
    "FROM (SELECT pg_advisory_xact_lock(2977, hashtext(%s))) AS key_lock "
    "RETURNING id"
)
_INSERT: Final = (
    "INSERT INTO backbone_outbox (ordering_key, subject, msg_id, event_id, event_source, "
    "  event_type, headers, payload, traceparent, tracestate) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
# Keys locked in one sorted pass before a multi-row insert: two transactions locking overlapping
# key sets in the same order cannot deadlock.
_LOCK_KEYS: Final = (
    "SELECT pg_advisory_xact_lock(2977, h) "
    "FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(%s::text[]) AS k) AS keys ORDER BY h"
)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An event ready to be stored: the NATS message the relay will publish, and its routing.

    Attributes:
        ordering_key: Events with the same key reach the stream in commit order.
        subject: The NATS subject (``subject_for(event.type)`` unless overridden).
        msg_id: ``Nats-Msg-Id``, the event's dedup id (source + id).
        event_id: The CloudEvent id.
        event_source: The CloudEvent source.
        event_type: The CloudEvent type.
        headers: NATS headers (CloudEvents binding, ``Nats-Msg-Id``, trace context).
        payload: NATS payload.
        traceparent: W3C trace context of the producing transaction, when one was active.
        tracestate: Its ``tracestate``.
    """

    ordering_key: str
    subject: str
    msg_id: str
    event_id: str
    event_source: str
    event_type: str
    headers: dict[str, str]
    payload: bytes
    traceparent: str | None
    tracestate: str | None

    def params(self) -> tuple[Any, ...]:
        """Values in the order of the INSERT's columns."""
        return (
            self.ordering_key,
            self.subject,
            self.msg_id,
            self.event_id,
            self.event_source,
            self.event_type,
            Jsonb(self.headers),
            self.payload,
            self.traceparent,
            self.tracestate,
        )


def build_record(
    event: CloudEvent, *, key: str | None = None, subject: str | None = None, mode: Mode = "binary"
) -> OutboxRecord:
    """Encode ``event`` as the row :func:`enqueue` stores (exposed for tests and tools).

    The ordering key defaults to the event's ``subject`` attribute, else its ``source``. When a
    span is active, its W3C context is added to the headers (so consumers continue the producing
    transaction's trace) and kept in the row (so the relay's publish span links to it).

    Raises:
        EventError: ``data`` is not representable in the chosen mode.
    """
    headers, payload = encode_nats(event, mode=mode)
    headers[MSG_ID_HEADER] = dedup_id(event)
    if trace.get_current_span().get_span_context().is_valid:
        inject_trace_headers(headers)
    traceparent = headers.get("traceparent")
    tracestate = headers.get("tracestate")
    if traceparent is None and isinstance(event.extensions.get("traceparent"), str):
        traceparent = str(event.extensions["traceparent"])
        state = event.extensions.get("tracestate")
        tracestate = state if isinstance(state, str) else None
    return OutboxRecord(
        ordering_key=key if key is not None else (event.subject or event.source),
        subject=subject or subject_for(event.type),
        msg_id=headers[MSG_ID_HEADER],
        event_id=event.id,
        event_source=event.source,
        event_type=event.type,
        headers=headers,
        payload=payload,
        traceparent=traceparent,
        tracestate=tracestate,
    )


def _check_transaction(status: pq.TransactionStatus, autocommit: bool) -> None:
    if autocommit and status == pq.TransactionStatus.IDLE:
        raise NotInTransactionError(
            "enqueue needs a transaction: use `async with conn.transaction():` (or a connection "
            "without autocommit), so the event commits or rolls back with your changes"
        )


async def enqueue(
    conn: AsyncConnection[Any],
    event: CloudEvent,
    *,
    key: str | None = None,
    subject: str | None = None,
    mode: Mode = "binary",
    lock_key: bool = True,
) -> int:
    """Store ``event`` in the outbox as part of ``conn``'s current transaction.

    Nothing is published unless the transaction commits; the relay publishes it afterwards with
    ``Nats-Msg-Id`` = the event's dedup id.

    Args:
        conn: An async psycopg connection inside a transaction.
        event: The CloudEvent.
        key: Ordering key; events with one key reach the stream in commit order. Default: the
            event's ``subject`` attribute, else its ``source``.
        subject: NATS subject; default ``subject_for(event.type)``.
        mode: NATS content mode of the stored message.
        lock_key: Take a transaction advisory lock on the key so same-key transactions commit in
            id order (the ordering guarantee). Turn off only when your own locks already
            serialise writers of a key; the order is then the insert order.

    Returns:
        The outbox row id.

    Raises:
        NotInTransactionError: ``conn`` is in autocommit mode outside a transaction block.
        EventError: The event cannot be encoded.
    """
    _check_transaction(conn.info.transaction_status, conn.autocommit)
    record = build_record(event, key=key, subject=subject, mode=mode)
    if lock_key:
        cur = await conn.execute(_INSERT_LOCKED, (*record.params(), record.ordering_key))
    else:
        cur = await conn.execute(_INSERT, record.params())
    row = await cur.fetchone()
    return int(row[0])  # type: ignore[index]


def enqueue_sync(
    conn: Connection[Any],
    event: CloudEvent,
    *,
    key: str | None = None,
    subject: str | None = None,
    mode: Mode = "binary",
    lock_key: bool = True,
) -> int:
    """Blocking twin of :func:`enqueue`, for synchronous psycopg connections."""
    _check_transaction(conn.info.transaction_status, conn.autocommit)
    record = build_record(event, key=key, subject=subject, mode=mode)
    if lock_key:
        row = conn.execute(_INSERT_LOCKED, (*record.params(), record.ordering_key)).fetchone()
    else:
        row = conn.execute(_INSERT, record.params()).fetchone()
    return int(row[0])  # type: ignore[index]


async def enqueue_many(
    conn: AsyncConnection[Any],
    events: Sequence[CloudEvent],
    *,
    key: str | None = None,
    mode: Mode = "binary",
    lock_key: bool = True,
) -> list[int]:
    """Store several events in the current transaction (one round trip per pipeline).

    Keys (``key`` for all, else each event's default) are locked once, in sorted order, before
    the rows are inserted in the order given.

    Returns:
        The row ids, in the order of ``events``.
    """
    _check_transaction(conn.info.transaction_status, conn.autocommit)
    if not events:
        return []
    records = [build_record(event, key=key, mode=mode) for event in events]
    if lock_key:
        await conn.execute(_LOCK_KEYS, ([r.ordering_key for r in records],))
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT, [r.params() for r in records], returning=True)
        ids: list[int] = []
        while True:
            row = await cur.fetchone()
            ids.append(int(row[0]))  # type: ignore[index]
            if not cur.nextset():
                break
    return ids
