"""The relay: moves committed outbox rows to JetStream with no loss and no reordering per key.

One relay runs one loop on one PostgreSQL connection (the *claim* connection, which also holds
its partition locks, see :mod:`backbone.outbox._partitions`) plus a LISTEN connection:

1. ``BEGIN``; claim up to ``batch_size`` unpublished rows of the owned partitions, oldest id
   first, ``FOR UPDATE SKIP LOCKED``;
2. publish them pipelined (``publish_async``; headers as stored, ``Nats-Msg-Id`` = dedup id,
   ``Nats-Expected-Stream`` from the catalog) and wait for every PubAck;
3. delete (or mark) the acknowledged rows, move poison rows to ``backbone_outbox_dead``; ``COMMIT``.

A crash anywhere before the commit rolls the claim back and the rows are published again, which
JetStream drops as duplicates (same ``Nats-Msg-Id`` within the stream's duplicate window): at
least once into the relay, exactly once into the stream. When a publish fails transiently
(timeout, NATS down) only the rows before it in the batch are finished; it and everything after
stay, so a key's order survives the retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import nats.errors
import nats.js.errors
import orjson
import psycopg
from opentelemetry.trace import Link, SpanKind, get_current_span
from psycopg.types.json import set_json_loads
from pydantic import BaseModel, Field

from backbone.errors import BackboneError
from backbone.messaging import EXPECTED_STREAM_HEADER, sender_for
from backbone.outbox._migrations import migrate
from backbone.outbox._partitions import PartitionOwnership
from backbone.outbox._sql import (
    DEAD_TABLE,
    OUTBOX_TABLE,
)
from backbone.resilience import Backoff
from backbone.telemetry import LogHistogram, extract_trace_context

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nats.aio.client import Client
    from nats.js.api import PubAck
    from opentelemetry.trace import Tracer

    from backbone.messaging import StreamCatalog
    from backbone.telemetry import Metrics

log = logging.getLogger(__name__)

_SERVICE_UNAVAILABLE: Final = 503

_CLAIM: Final = (
    "SELECT id, subject, headers, payload, event_type, traceparent, tracestate, created_at "
    "FROM backbone_outbox "
    "WHERE published_at IS NULL AND partition = ANY(%s::smallint[]) "
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
_DELETE: Final = "DELETE FROM backbone_outbox WHERE id = ANY(%s::bigint[])"
_MARK: Final = (
    "UPDATE backbone_outbox SET published_at = clock_timestamp() WHERE id = ANY(%s::bigint[])"
)
_BURY: Final = (
    "WITH bad(id, error) AS (SELECT * FROM unnest(%s::bigint[], %s::text[])), "
    "moved AS (DELETE FROM backbone_outbox o USING bad WHERE o.id = bad.id "
    "RETURNING o.*, bad.error AS dead_error) "
    "INSERT INTO backbone_outbox_dead (id, "
    "ordering_key, subject, msg_id, event_id, event_source, event_type, headers, payload, "
    "traceparent, tracestate, "
    "  created_at, attempts, error) "
    "SELECT id, "
    "ordering_key, subject, msg_id, event_id, event_source, event_type, headers, payload, "
    "traceparent, tracestate, "
    "  created_at, attempts + 1, dead_error FROM moved "
    "ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, dead_at = EXCLUDED.dead_at"
)
_FAILED: Final = "UPDATE backbone_outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s"
_HOUSEKEEP: Final = (
    "DELETE FROM backbone_outbox WHERE id IN (SELECT id FROM backbone_outbox "
    "WHERE published_at < clock_timestamp() - make_interval(secs => %s) LIMIT 10000) "
    "AND pg_try_advisory_xact_lock(2980, 1)"
)

_DEAD_TUPLES: Final = (
    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'backbone_outbox'::regclass"
)
_VACUUM_LOCK: Final = "SELECT pg_try_advisory_lock(2980, 2)"
_VACUUM_UNLOCK: Final = "SELECT pg_advisory_unlock(2980, 2)"

# Failures that say "this message will never be accepted as it is".
_POISON_PUBLISH = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError)


class RelayConfig(BaseModel):
    """Knobs of the relay (the ``outbox`` settings section: ``BACKBONE_OUTBOX__BATCH_SIZE``...).

    Attributes:
        batch_size: Rows claimed, published and committed together.
        ack_timeout_s: How long a batch waits for its PubAcks before the rest is retried.
        poll_interval_s: Claim at least this often without a notification (NOTIFY is lost while
            no relay listens, and a backlog older than the relay has no notification at all).
        rebalance_interval_s: How often partition shares are recomputed; bounds failover.
        listen: Wake up on ``LISTEN/NOTIFY`` (latency) rather than on polling alone.
        retention: ``delete`` published rows, or ``mark`` them (``published_at``) and delete
            them after ``keep_published_s``.
        keep_published_s: How long ``mark`` retention keeps published rows.
        housekeeping_interval_s: How often housekeeping runs: ``mark`` retention deletes expired
            rows, and the table is vacuumed when it holds ``vacuum_dead_tuples`` dead rows.
        vacuum_dead_tuples: Dead tuples that make a relay ``VACUUM`` the outbox itself (one relay
            at a time), instead of waiting for autovacuum's next round (``autovacuum_naptime``,
            a minute by default); 0 leaves it to autovacuum.
        backoff_initial_s: First pause after a failure (NATS or PostgreSQL); doubles up to
            ``backoff_max_s``, with jitter.
        backoff_max_s: Longest pause between attempts.
        session_timeout_s: ``idle_session_timeout`` and ``idle_in_transaction_session_timeout`` of
            the claim session: a relay frozen for this long loses its partitions to the others.
        connect_timeout_s: PostgreSQL connect timeout.
        migrate: Apply pending outbox migrations at start.
    """

    batch_size: int = Field(default=1000, ge=1, le=10_000)
    ack_timeout_s: float = Field(default=5.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    rebalance_interval_s: float = Field(default=1.0, gt=0)
    listen: bool = True
    retention: Literal["delete", "mark"] = "delete"
    keep_published_s: float = Field(default=86_400.0, ge=0)
    housekeeping_interval_s: float = Field(default=1.0, gt=0)
    vacuum_dead_tuples: int = Field(default=10_000, ge=0)
    backoff_initial_s: float = Field(default=0.05, gt=0)
    backoff_max_s: float = Field(default=5.0, gt=0)
    session_timeout_s: float = Field(default=15.0, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    migrate: bool = True


@dataclass
class RelayStats:
    """Counters of one relay since it started."""

    published: int = 0
    duplicates: int = 0
    dead: int = 0
    batches: int = 0
    publish_failures: int = 0
    pg_failures: int = 0
    vacuums: int = 0
    last_error: str | None = None
    batch_latency: LogHistogram = field(default_factory=LogHistogram)


@dataclass(slots=True)
class _Outcome:
    ok: list[int]
    acks: list[PubAck]
    streams: list[str]
    event_types: list[str]
    dead_ids: list[int]
    dead_errors: list[str]
    failed_id: int | None = None
    failed_error: str | None = None


class OutboxRelay:
    """Publishes committed outbox rows to JetStream (see the module docs for the guarantees).

    Args:
        dsn: PostgreSQL connection string of the database holding the outbox.
        nc: A connected nats-py client (reconnecting forever is recommended).
        catalog: Declared streams; a subject no stream captures makes the row poison.
        config: Relay knobs.
        metrics: Where to record publishes and batch latencies (optional).
        tracer: Creates one ``send outbox batch`` span per batch, linked to the producing
            transactions' traces (optional).
        name: ``application_name`` of the relay's PostgreSQL sessions.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        dsn: str,
        nc: Client,
        catalog: StreamCatalog,
        config: RelayConfig | None = None,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        name: str = "outbox-relay",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn
        self.config = config or RelayConfig()
        self.name = name
        self.stats = RelayStats()
        self._nc = nc
        # The connection's JetStream sender: the stored headers go out without nats-py's
        # per-header Python encoding (backbone.messaging._jetstream).
        self._sender = sender_for(nc)
        self._catalog = catalog
        self._metrics = metrics
        self._tracer = tracer
        self._clock = clock
        self._ownership = PartitionOwnership()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._pg_ok = False
        self._streams: dict[str, str | None] = {}
        self.in_flight = 0
        """Rows of the batch being published right now (0 between batches)."""
        if metrics is not None:
            self._batch_hist = metrics.histogram(
                "outbox_batch_latency_seconds", "Claim to commit time of one outbox batch."
            )
            self._lag_hist = metrics.histogram(
                "outbox_commit_to_ack_seconds",
                "Age of the oldest row of a batch when its PubAcks arrived.",
            )
            self._dead_counter = metrics.counter(
                "outbox_rows_buried", "Outbox rows moved to the dead table."
            )

    # -- state -------------------------------------------------------------------------------

    @property
    def owned_partitions(self) -> frozenset[int]:
        """Partitions this relay owns right now."""
        return frozenset(self._ownership.owned)

    @property
    def members(self) -> int:
        """Live relays seen at the last rebalance (this one included)."""
        return self._ownership.members

    @property
    def postgres_ok(self) -> bool:
        """Whether the claim session is up."""
        return self._pg_ok

    @property
    def ready(self) -> bool:
        """Whether the relay can move rows: PostgreSQL session up and NATS connected."""
        return self._pg_ok and self._nc.is_connected

    @property
    def stopping(self) -> bool:
        """Whether :meth:`request_stop` was called."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the batch in flight is committed."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Claim now instead of at the next notification or poll."""
        self._wake.set()

    # -- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until :meth:`request_stop`; PostgreSQL failures are retried with backoff."""
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._stop.is_set():
            try:
                await self._session(backoff)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self.stats.pg_failures += 1
                self.stats.last_error = f"postgres: {exc}".strip()
                log.warning("outbox relay lost PostgreSQL (%s); retrying", str(exc).strip())
                await self._pause(backoff.next_s())
        log.info("outbox relay stopped")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            application_name=self.name,
            connect_timeout=max(1, round(self.config.connect_timeout_s)),
            # A dead peer is noticed within ~11 s instead of the kernel's two hours.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        set_json_loads(orjson.loads, conn)
        return conn

    async def _session(self, backoff: Backoff) -> None:
        async with await self._connect() as conn:
            timeout_ms = int(self.config.session_timeout_s * 1000)
            await conn.execute(
                f"SET idle_session_timeout = {timeout_ms}; "
                f"SET idle_in_transaction_session_timeout = {timeout_ms}"
            )
            if self.config.migrate:
                await migrate(conn)
            await self._ownership.join(conn)
            listener = asyncio.create_task(self._listen()) if self.config.listen else None
            housekeeper = asyncio.create_task(self._housekeeper())
            self._pg_ok = True
            backoff.reset()
            try:
                await self._loop(conn, listener, housekeeper, backoff)
            finally:
                self._pg_ok = False
                self._ownership.forget()
                for task in (listener, housekeeper):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                            await task

    async def _listen(self) -> None:
        async with await self._connect() as conn:
            await conn.execute("LISTEN backbone_outbox")
            self._wake.set()  # rows committed before LISTEN took effect have no notification
            async for _ in conn.notifies():
                self._wake.set()

    async def _housekeeper(self) -> None:
        # On a connection of its own: a VACUUM of a churning table takes a while, and the claim
        # loop keeps publishing meanwhile.
        async with await self._connect() as conn:
            while not self._stop.is_set():
                await self._pause(self.config.housekeeping_interval_s)
                if not self._stop.is_set():
                    await self._housekeep(conn)

    async def _loop(
        self,
        conn: psycopg.AsyncConnection[Any],
        listener: asyncio.Task[None] | None,
        housekeeper: asyncio.Task[None],
        backoff: Backoff,
    ) -> None:
        cfg = self.config
        next_rebalance = 0.0
        while not self._stop.is_set():
            now = self._clock()
            if now >= next_rebalance:
                acquired, released = await self._ownership.rebalance(conn)
                if acquired or released:
                    log.info(
                        "outbox partitions rebalanced",
                        extra={
                            "acquired": sorted(acquired),
                            "released": sorted(released),
                            "owned": len(self._ownership.owned),
                            "relays": self._ownership.members,
                        },
                    )
                    self._wake.set()
                next_rebalance = now + cfg.rebalance_interval_s
            if listener is not None and listener.done():
                listener.result()  # raises the PostgreSQL error that ended it
                listener = asyncio.create_task(self._listen())
            if housekeeper.done():
                housekeeper.result()  # raises the PostgreSQL error that ended it
                housekeeper = asyncio.create_task(self._housekeeper())
            if not self._nc.is_connected:
                # Nothing can be published; keep the session (and partitions) alive meanwhile.
                await self._pause(min(0.1, cfg.poll_interval_s))
                continue
            claimed = 0
            if self._ownership.owned:
                self._wake.clear()  # before the claim: a NOTIFY arriving during it is not lost
                claimed, failed = await self._cycle(conn)
                if failed:
                    await self._pause(backoff.next_s())
                    continue
                backoff.reset()
            if claimed < cfg.batch_size:
                wait_s = min(cfg.poll_interval_s, max(next_rebalance - self._clock(), 0.0))
                await self._idle(wait_s)

    async def _housekeep(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cfg = self.config
        if cfg.retention == "mark":
            await conn.execute(_HOUSEKEEP, (cfg.keep_published_s,))
        if cfg.vacuum_dead_tuples <= 0:
            return
        cur = await conn.execute(_DEAD_TUPLES)
        row = await cur.fetchone()
        if row is None or row[0] is None or row[0] < cfg.vacuum_dead_tuples:
            return
        locked = await (await conn.execute(_VACUUM_LOCK)).fetchone()
        if not locked or not locked[0]:
            return  # another relay is vacuuming
        try:
            started = self._clock()
            # A queue table is small but churns: vacuuming it is quick and keeps the claim
            # index scan from wading through dead entries.
            await conn.execute("VACUUM (SKIP_LOCKED) backbone_outbox")
            self.stats.vacuums += 1
            log.info(
                "vacuumed %s (%d dead tuples) in %.3f s",
                OUTBOX_TABLE,
                row[0],
                self._clock() - started,
            )
        finally:
            await conn.execute(_VACUUM_UNLOCK)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    # -- one batch ---------------------------------------------------------------------------

    async def _cycle(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, bool]:
        """Claim, publish, finish and commit one batch; returns ``(rows claimed, failed)``."""
        started = self._clock()
        async with conn.transaction():
            cur = await conn.execute(
                _CLAIM, (sorted(self._ownership.owned), self.config.batch_size), prepare=True
            )
            rows = await cur.fetchall()
            if not rows:
                return 0, False
            self.in_flight = len(rows)
            try:
                outcome = await self._publish_traced(rows)
            finally:
                self.in_flight = 0
            if outcome.ok:
                await conn.execute(
                    _DELETE if self.config.retention == "delete" else _MARK,
                    (outcome.ok,),
                    prepare=True,
                )
            if outcome.dead_ids:
                await conn.execute(_BURY, (outcome.dead_ids, outcome.dead_errors))
        # Committed: the stream has the rows and the table no longer does.
        self._account(rows, outcome, self._clock() - started)
        if outcome.failed_id is not None:
            await conn.execute(_FAILED, (outcome.failed_error, outcome.failed_id))
            return len(rows), True
        return len(rows), False

    def _account(self, rows: Sequence[Any], outcome: _Outcome, latency_s: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.published += len(outcome.ok)
        duplicates = sum(1 for ack in outcome.acks if ack.duplicate)
        stats.duplicates += duplicates
        stats.dead += len(outcome.dead_ids)
        stats.batch_latency.record(latency_s)
        if outcome.failed_id is not None:
            stats.publish_failures += 1
            stats.last_error = outcome.failed_error
        for dead_id, error in zip(outcome.dead_ids, outcome.dead_errors, strict=True):
            log.error("outbox row %d moved to %s: %s", dead_id, DEAD_TABLE, error)
        metrics = self._metrics
        if metrics is None:
            return
        for ack, stream, event_type in zip(
            outcome.acks, outcome.streams, outcome.event_types, strict=True
        ):
            metrics.record_published(
                stream=stream, event_type=event_type, duplicate=bool(ack.duplicate)
            )
        if outcome.failed_id is not None:
            metrics.record_publish_failure(
                event_type="outbox", error=(outcome.failed_error or "").split(":")[0]
            )
        if outcome.dead_ids:
            self._dead_counter.inc(len(outcome.dead_ids))
        self._batch_hist.observe(latency_s)
        oldest = rows[0][7]
        self._lag_hist.observe(max((datetime.now(UTC) - oldest).total_seconds(), 0.0))

    def _stream_for(self, subject: str) -> str | None:
        try:
            return self._streams[subject]
        except KeyError:
            try:
                stream: str | None = self._catalog.stream_for(subject).name
            except BackboneError:
                stream = None
            self._streams[subject] = stream
            return stream

    async def _publish_traced(self, rows: Sequence[Any]) -> _Outcome:
        if self._tracer is None:
            return await self._publish(rows)
        links = []
        for row in rows:
            if row[5]:
                ctx = get_current_span(
                    extract_trace_context(None, traceparent=row[5], tracestate=row[6])
                )
                links.append(Link(ctx.get_span_context()))
        with self._tracer.start_as_current_span(
            "send outbox batch",
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={"messaging.system": "nats", "messaging.batch.message_count": len(rows)},
        ) as span:
            outcome = await self._publish(rows)
            span.set_attribute("backbone.outbox.dead", len(outcome.dead_ids))
            if outcome.failed_error is not None:
                span.set_attribute("error.type", outcome.failed_error.split(":")[0])
            return outcome

    async def _publish(self, rows: Sequence[Any]) -> _Outcome:  # noqa: C901, PLR0912, PLR0915 - one pass
        """Publish ``rows`` pipelined and sort each into ok / poison / not done."""
        nc, publish_async = self._nc, self._sender.publish_async
        max_payload = nc.max_payload
        futures: list[asyncio.Future[PubAck] | None] = [None] * len(rows)
        streams: list[str] = [""] * len(rows)
        errors: dict[int, tuple[str, bool]] = {}  # index -> (error, poison)
        for index, row in enumerate(rows):
            subject, headers, payload = row[1], row[2], row[3]
            stream = self._stream_for(subject)
            if stream is None:
                errors[index] = (
                    f"NoStreamForSubjectError: no stream captures subject {subject!r}",
                    True,
                )
                continue
            headers[EXPECTED_STREAM_HEADER] = stream
            size = len(payload) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 12
            if size > max_payload:
                # The server would close the connection on it: never send it.
                errors[index] = (
                    f"MaxPayloadError: message of {size} bytes exceeds {max_payload}",
                    True,
                )
                continue
            if not nc.is_connected:
                # Never let nats-py buffer a publish for after a reconnect: an earlier row lost
                # in the dead socket would then land after this one.
                errors[index] = ("ConnectionError: NATS disconnected", False)
                break
            try:
                futures[index] = await publish_async(subject, payload, headers)
            except _POISON_PUBLISH as exc:
                errors[index] = (f"{type(exc).__name__}: {exc}", True)
            except Exception as exc:  # noqa: BLE001 - anything else: retry from this row
                errors[index] = (f"{type(exc).__name__}: {exc}", False)
                break
            streams[index] = stream
        pending = [f for f in futures if f is not None]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.config.ack_timeout_s)
            for late_future in late:
                late_future.cancel()
        outcome = _Outcome(ok=[], acks=[], streams=[], event_types=[], dead_ids=[], dead_errors=[])
        for index, row in enumerate(rows):
            future = futures[index]
            if future is None:
                error, poison = errors.get(index, ("ConnectionError: not sent", False))
            elif future.cancelled():
                error, poison = (
                    f"PublishTimeoutError: no PubAck within {self.config.ack_timeout_s} s",
                    False,
                )
            elif (failure := future.exception()) is None:
                outcome.ok.append(row[0])
                outcome.acks.append(future.result())
                outcome.streams.append(streams[index])
                outcome.event_types.append(row[4])
                continue
            elif (
                isinstance(failure, nats.js.errors.APIError)
                and failure.code != _SERVICE_UNAVAILABLE
            ):
                error, poison = f"{type(failure).__name__}: {failure.description or failure}", True
            else:
                error, poison = f"{type(failure).__name__}: {failure}", False
            if not poison:
                # Stop here: this row and every later one stay for the next attempt, in order.
                outcome.failed_id, outcome.failed_error = row[0], error
                break
            outcome.dead_ids.append(row[0])
            outcome.dead_errors.append(error)
        return outcome
