"""Plain pieces the app wires together: outbox status gauges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from backbone.outbox import OutboxRelay, OutboxStatus, outbox_status

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from backbone.telemetry import GaugeCallback

log = logging.getLogger(__name__)


class StatusGauges:
    """Outbox-wide levels for metrics snapshots, read at most once per ``max_age_s``.

    The reporter evaluates its gauges concurrently; they share one query on one connection.

    Args:
        dsn: The outbox database.
        relays: This process's relay loops (for their partitions and batch latencies).
        max_age_s: How long a status read is reused.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        dsn: str,
        relays: Sequence[OutboxRelay],
        *,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dsn = dsn
        self._relays = list(relays)
        self._max_age_s = max_age_s
        self._clock = clock
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._status: OutboxStatus | None = None
        self._read_at = float("-inf")

    async def status(self) -> OutboxStatus:
        """The current status (cached); raises when PostgreSQL cannot be read."""
        async with self._lock:
            if self._status is not None and self._clock() - self._read_at < self._max_age_s:
                return self._status
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True, application_name="outbox-relay-status"
                    )
                self._status = await outbox_status(self._conn)
            except psycopg.Error:
                await self.close()
                raise
            self._read_at = self._clock()
            return self._status

    def gauges(self) -> dict[str, GaugeCallback]:
        """Gauge callbacks for :class:`backbone.telemetry.MetricsReporter`."""
        workers = self._relays

        async def backlog() -> float:
            return float((await self.status()).backlog)

        async def oldest_age_s() -> float:
            return (await self.status()).oldest_age_s

        async def dead() -> float:
            return float((await self.status()).dead)

        async def relays() -> float:
            return float((await self.status()).relays)

        async def dead_tuples() -> float:
            return float((await self.status()).dead_tuples)

        def batch_latency_p99_ms() -> float:
            return max(r.stats.batch_latency.percentile(0.99) for r in workers) * 1000.0

        def partitions_owned() -> float:
            return float(sum(len(r.owned_partitions) for r in workers))

        return {
            "outbox_backlog": backlog,
            "outbox_oldest_age_s": oldest_age_s,
            "outbox_dead": dead,
            "outbox_relays": relays,
            "outbox_dead_tuples": dead_tuples,
            "outbox_partitions_owned": partitions_owned,
            "outbox_batch_latency_p99_ms": batch_latency_p99_ms,
        }

    async def close(self) -> None:
        """Close the status connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
