"""Partition ownership through PostgreSQL session advisory locks, rebalanced as relays come and go.

Every live relay holds a *member* lock (class :data:`LOCK_CLASS_MEMBER`, object = its backend
pid) and a *partition* lock (class :data:`LOCK_CLASS_PARTITION`, object = partition) for each
partition it owns, all on the connection it claims rows with. Every ``rebalance_interval_s`` a
relay counts the members in ``pg_locks``, computes its fair share ``ceil(PARTITIONS / members)``,
releases what it holds above the share (only between batches, after a commit) and try-locks free
partitions up to it. A relay that dies loses its session, and PostgreSQL drops its locks with it
(and rolls back its open claim), so the survivors pick its partitions up at their next rebalance.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Final

from backbone.outbox._sql import LOCK_CLASS_MEMBER, LOCK_CLASS_PARTITION, PARTITIONS

if TYPE_CHECKING:
    from psycopg import AsyncConnection

_LOCKS: Final = (
    "SELECT classid::int, objid::int FROM pg_locks "
    "WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::int IN (%s, %s)"
)


def fair_share(members: int, partitions: int = PARTITIONS) -> int:
    """How many partitions one of ``members`` relays should own (rounded up)."""
    return math.ceil(partitions / max(members, 1))


class PartitionOwnership:
    """The partitions this relay owns, kept on the relay's claim connection.

    Args:
        partitions: Total partitions (fixed by the schema).
        rng: Randomness used to spread concurrent relays over different free partitions.
    """

    def __init__(self, *, partitions: int = PARTITIONS, rng: random.Random | None = None) -> None:
        self.partitions = partitions
        self.owned: set[int] = set()
        self.members = 0
        self._rng = rng or random.Random()  # noqa: S311 - load spreading

    def forget(self) -> None:
        """The session is gone: PostgreSQL released every lock with it."""
        self.owned.clear()
        self.members = 0

    async def join(self, conn: AsyncConnection[Any]) -> None:
        """Take this relay's member lock on a fresh session."""
        self.forget()
        await conn.execute("SELECT pg_advisory_lock(%s, pg_backend_pid())", (LOCK_CLASS_MEMBER,))

    async def rebalance(self, conn: AsyncConnection[Any]) -> tuple[set[int], set[int]]:
        """Move towards the fair share; returns ``(acquired, released)`` partitions.

        Must run outside a claim transaction (released partitions must have nothing in flight).
        """
        cur = await conn.execute(_LOCKS, (LOCK_CLASS_MEMBER, LOCK_CLASS_PARTITION))
        rows = await cur.fetchall()
        self.members = sum(1 for cls, _ in rows if cls == LOCK_CLASS_MEMBER)
        held = {obj for cls, obj in rows if cls == LOCK_CLASS_PARTITION}
        share = fair_share(self.members, self.partitions)
        acquired: set[int] = set()
        released: set[int] = set()
        if len(self.owned) > share:
            released = set(sorted(self.owned, reverse=True)[: len(self.owned) - share])
            await conn.execute(
                "SELECT pg_advisory_unlock(%s, p) FROM unnest(%s::int[]) AS p",
                (LOCK_CLASS_PARTITION, sorted(released)),
            )
            self.owned -= released
        elif len(self.owned) < share:
            free = [p for p in range(self.partitions) if p not in held]
            self._rng.shuffle(free)
            # One round trip: the WHERE clause try-locks candidates until LIMIT of them succeeded.
            cur = await conn.execute(
                # No ORDER BY: a sort would evaluate (and lock) every candidate first.
                "SELECT p FROM unnest(%s::int[]) AS p WHERE pg_try_advisory_lock(%s, p) LIMIT %s",
                (free, LOCK_CLASS_PARTITION, share - len(self.owned)),
            )
            acquired = {int(row[0]) for row in await cur.fetchall()}
            self.owned |= acquired
        return acquired, released
