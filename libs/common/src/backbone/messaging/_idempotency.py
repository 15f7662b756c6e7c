"""Processed-event ids in a JetStream KV bucket with a TTL (the ``idempotency`` bucket).

Within the stream's duplicate window JetStream already drops repeated publishes; this store covers
what comes after: redeliveries (a consumer died after the side effect but before its ack) and
re-publishes older than the window. The consumer checks :meth:`seen` before calling the handler and
:meth:`mark` s the id after the handler succeeded, before the ack.

Guarantee and its limit: a redelivery of an event whose id was marked is skipped, so a side effect
runs once per successful handling. A process killed *between* the side effect and the mark (one KV
round trip, well under a millisecond) runs that side effect again on redelivery: the store narrows
at-least-once to that window, it cannot close it. Side effects that must be exactly-once commit the
id in the same transaction as the effect: :class:`PostgresIdempotency` (an inbox table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

IDEMPOTENCY_BUCKET = "idempotency"


class IdempotencyStore:
    """Processed ids in a KV bucket; entries expire with the bucket's TTL."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: object, *, bucket: str = IDEMPOTENCY_BUCKET) -> IdempotencyStore:
        """Bind to an existing bucket (created by `backbone streams apply`)."""
        return cls(await js.key_value(bucket))  # type: ignore[attr-defined]

    async def seen(self, key: str) -> bool:
        """Whether ``key`` was marked processed (and has not expired)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return False
        return entry.value is not None

    async def mark(self, key: str) -> bool:
        """Record ``key`` as processed; False when it already was (a concurrent duplicate)."""
        try:
            await self._kv.create(key, b"1")
        except KeyWrongLastSequenceError:
            return False
        return True


PROCESSED_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS backbone_processed (
    key          text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
)
"""


class PostgresIdempotency:
    """Exactly-once side effects for handlers that write to PostgreSQL (the inbox pattern).

    The processed id is inserted in the *same transaction* as the handler's own writes, so either
    both commit or neither does: a consumer killed at any point redoes the transaction on
    redelivery, or finds the id and skips it. This closes the window the KV store leaves open,
    for side effects that live in the same database::

        async with conn.transaction():
            if await inbox.claim(conn, f"{durable}.{dedup_id(event)}"):
                await conn.execute("INSERT INTO orders ...")
    """

    async def ensure_table(self, conn: Any) -> None:  # noqa: ANN401 - psycopg AsyncConnection
        """Create ``backbone_processed`` if it is missing."""
        await conn.execute(PROCESSED_TABLE_DDL)

    async def claim(self, conn: Any, key: str) -> bool:  # noqa: ANN401 - psycopg AsyncConnection
        """Record ``key`` inside the caller's transaction; False when it was processed before."""
        cursor = await conn.execute(
            "INSERT INTO backbone_processed (key) VALUES (%s) ON CONFLICT DO NOTHING RETURNING 1",
            (key,),
        )
        return await cursor.fetchone() is not None

    async def purge(self, conn: Any, *, older_than_s: float) -> int:  # noqa: ANN401
        """Forget ids older than ``older_than_s`` (the redelivery horizon); returns how many."""
        cursor = await conn.execute(
            "DELETE FROM backbone_processed WHERE processed_at < now() - make_interval(secs => %s)",
            (older_than_s,),
        )
        return int(cursor.rowcount)
