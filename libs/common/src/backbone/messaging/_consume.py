"""Durable pull consumers that replicas share: ack on success, nak with backoff, dead letters.

Flow of one message::

    decode CloudEvent ──bad──────────────────────────────► dead letter (no retry can fix it)
        │ ok
    delivered more than max_deliver times? ──yes─────────► dead letter (crash loop)
        │ no
    already processed (idempotency store)? ──yes─────────► ack, skip
        │ no
    handler(event, delivery) ──ok──► mark processed ─────► ack
        │ raises
    attempts left? ──yes──► nak(delay = backoff[n])
        │ no
    publish to dlq.<subject> (awaits PubAck) ──► term;  if that publish fails ──► nak (nothing lost)

``stop()`` stops fetching, lets in-flight handlers finish and acknowledges them before returning, so
a SIGTERM loses nothing; a SIGKILL loses nothing either, because unacknowledged messages are
redelivered after ``ack_wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import nats.errors
import nats.js.errors
from nats.js import api

from backbone.errors import ConsumeError, EventError
from backbone.events import decode_nats, dedup_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from opentelemetry.trace import Tracer

    from backbone.events import CloudEvent
    from backbone.messaging._idempotency import IdempotencyStore
    from backbone.telemetry import Metrics

log = logging.getLogger(__name__)

DLQ_PREFIX = "dlq"
#: Headers added to a dead letter (the original headers are kept as well).
DLQ_HEADERS = (
    "Backbone-Original-Subject",
    "Backbone-Original-Stream",
    "Backbone-Original-Sequence",
    "Backbone-Delivery-Count",
    "Backbone-Error-Type",
    "Backbone-Error-Message",
    "Backbone-Consumer",
)
_MAX_ERROR_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Delivery:
    """Transport facts about one delivery, passed to handlers next to the event."""

    subject: str
    stream: str
    stream_seq: int
    num_delivered: int
    headers: Mapping[str, str]


@dataclass
class ConsumerStats:
    """Counters of one consumer (also exported as metrics by the service)."""

    handled: int = 0
    failed: int = 0
    skipped_duplicates: int = 0
    dead_lettered: int = 0
    in_flight: int = 0
    last_error: str | None = field(default=None)


def dlq_subject(subject: str) -> str:
    """The dead-letter subject of ``subject`` (``mcp.server.error`` → ``dlq.mcp.server.error``)."""
    return f"{DLQ_PREFIX}.{subject}"


class Consumer:
    """A durable pull consumer on one stream that any number of replicas share.

    Args:
        nc: Connected nats-py client.
        stream: Stream name (from the streams file).
        durable: Durable consumer name; replicas using the same name split the messages.
        handler: ``async (event, delivery) -> Any``; raising means failure.
        filter_subjects: Subjects to consume (default: the whole stream).
        max_deliver: Attempts before a message is dead-lettered.
        backoff_s: Nak delays for attempt 1, 2, ...; the last one repeats.
        ack_wait_s: Redelivery delay of a message whose consumer died.
        batch: Messages fetched per pull.
        concurrency: Handlers run at once (1 keeps per-consumer order).
        idempotency: Processed-id store; redeliveries of processed events are skipped.
        tracer: OpenTelemetry tracer: each handler run is a ``process <subject>`` CONSUMER span,
            child of the producer's span carried by the message.
        metrics: Where handled/failed/dead-lettered counts and handler latency are recorded.
        deliver_policy: Where a *new* durable starts (an existing one keeps its position):
            every message, only new ones, from ``opt_start_seq`` or from ``opt_start_time``.
        opt_start_seq: First stream sequence for ``by_start_sequence``.
        opt_start_time: First message time for ``by_start_time`` (timezone-aware).
    """

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        durable: str,
        handler: Callable[[CloudEvent, Delivery], Awaitable[Any]],
        filter_subjects: Sequence[str] = (),
        max_deliver: int = 5,
        backoff_s: Sequence[float] = (0.5, 2.0, 10.0),
        ack_wait_s: float = 30.0,
        batch: int = 64,
        concurrency: int = 16,
        fetch_timeout_s: float = 1.0,
        idempotency: IdempotencyStore | None = None,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        deliver_policy: Literal["all", "new", "by_start_sequence", "by_start_time"] = "all",
        opt_start_seq: int | None = None,
        opt_start_time: datetime | None = None,
    ) -> None:
        if max_deliver < 1:
            raise ConsumeError("max_deliver must be at least 1")
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.filter_subjects = tuple(filter_subjects)
        self.max_deliver = max_deliver
        self.backoff_s = tuple(backoff_s) or (1.0,)
        self.ack_wait_s = ack_wait_s
        self.batch = batch
        self.concurrency = max(1, concurrency)
        self.fetch_timeout_s = fetch_timeout_s
        self.idempotency = idempotency
        self.tracer = tracer
        self.metrics = metrics
        self.deliver_policy = deliver_policy
        self.opt_start_seq = opt_start_seq
        self.opt_start_time = opt_start_time
        self.stats = ConsumerStats()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._sub: Any = None
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create or bind the durable consumer and start fetching in the background."""
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            # The server must keep redelivering past our limit: dead-lettering is our decision,
            # taken when the handler fails for the max_deliver-th time.
            max_deliver=-1,
            max_ack_pending=max(self.batch * 4, self.concurrency * 4, 1000),
            deliver_policy=api.DeliverPolicy(self.deliver_policy),
            opt_start_seq=self.opt_start_seq,
            opt_start_time=self.opt_start_time,
        )
        if len(self.filter_subjects) == 1:
            config.filter_subject = self.filter_subjects[0]
        elif self.filter_subjects:
            config.filter_subjects = list(self.filter_subjects)
        try:
            await self._js.add_consumer(self.stream, config=config)
        except nats.js.errors.NotFoundError as exc:
            raise ConsumeError(
                f"stream {self.stream} does not exist: run `backbone streams apply`"
            ) from exc
        except nats.js.errors.APIError as exc:
            # The durable exists with other settings (an older version, another start position):
            # keep it and its position, bind to it. Anything else is a real error.
            try:
                await self._js.consumer_info(self.stream, self.durable)
            except nats.js.errors.NotFoundError:
                raise ConsumeError(
                    f"cannot create consumer {self.stream}/{self.durable}: {exc.description or exc}"
                ) from exc
            log.warning(
                "consumer %s/%s exists with other settings (%s); binding to it",
                self.stream,
                self.durable,
                exc.description or exc,
            )
        self._sub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        self._runner = asyncio.create_task(self._run(), name=f"consumer:{self.durable}")

    async def _run(self) -> None:
        task = asyncio.current_task()
        while not self._stopping.is_set():
            # nats-py's fetch can turn a cancellation into a TimeoutError; never loop past one,
            # nor past a closed connection.
            if (task is not None and task.cancelling()) or self._nc.is_closed:
                return
            free = self._free_slots()
            if free == 0:
                await asyncio.sleep(0.001)
                continue
            try:
                msgs = await self._sub.fetch(min(self.batch, free), timeout=self.fetch_timeout_s)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                await asyncio.sleep(0.2)
                continue
            except Exception:
                log.exception("fetch from %s/%s failed", self.stream, self.durable)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._slots.acquire()
                task = asyncio.create_task(self._process(msg))
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _free_slots(self) -> int:
        return self.concurrency - len(self._tasks)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _process(self, msg: Msg) -> None:
        self.stats.in_flight += 1
        try:
            await self._process_one(msg)
        except Exception:
            log.exception("unexpected failure processing a message on %s", msg.subject)
        finally:
            self.stats.in_flight -= 1

    async def _process_one(self, msg: Msg) -> None:
        meta = msg.metadata
        headers = msg.headers or {}
        delivery = Delivery(
            subject=msg.subject,
            stream=meta.stream,
            stream_seq=meta.sequence.stream,
            num_delivered=meta.num_delivered,
            headers=headers,
        )
        try:
            event = decode_nats(headers, msg.data)
        except EventError as exc:
            await self._dead_letter(msg, delivery, exc)
            return
        if delivery.num_delivered > self.max_deliver:
            # Delivered again after the last attempt: its consumer died while handling it each time.
            await self._dead_letter(
                msg,
                delivery,
                ConsumeError(f"delivered {delivery.num_delivered} times without an ack"),
            )
            return
        key = f"{self.durable}.{dedup_id(event)}" if self.idempotency is not None else ""
        if self.idempotency is not None and await self.idempotency.seen(key):
            self.stats.skipped_duplicates += 1
            await msg.ack()
            return
        started = time.perf_counter()
        try:
            await self._call_handler(event, delivery)
        except Exception as exc:  # noqa: BLE001 - the handler failing, however, is data here
            if self.metrics is not None:
                self.metrics.record_handled(
                    stream=delivery.stream,
                    event_type=event.type,
                    latency_s=time.perf_counter() - started,
                    error=type(exc).__name__,
                )
            self.stats.failed += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            if delivery.num_delivered >= self.max_deliver:
                await self._dead_letter(msg, delivery, exc)
            else:
                delay = self.backoff_s[min(delivery.num_delivered, len(self.backoff_s)) - 1]
                log.warning(
                    "handler failed on %s seq %d (attempt %d/%d): %r; retry in %.1fs",
                    delivery.subject,
                    delivery.stream_seq,
                    delivery.num_delivered,
                    self.max_deliver,
                    exc,
                    delay,
                )
                await msg.nak(delay=delay)
            return
        if self.metrics is not None:
            self.metrics.record_handled(
                stream=delivery.stream,
                event_type=event.type,
                latency_s=time.perf_counter() - started,
            )
        if self.idempotency is not None:
            await self.idempotency.mark(key)
        await msg.ack()
        self.stats.handled += 1

    async def _call_handler(self, event: CloudEvent, delivery: Delivery) -> None:
        if self.tracer is None:
            await self.handler(event, delivery)
            return
        # Imported here: OpenTelemetry costs ~0.1 s at import, which CLI commands never need.
        from backbone.telemetry import consumer_span  # noqa: PLC0415

        with consumer_span(
            self.tracer,
            subject=delivery.subject,
            message_id=event.id,
            headers=delivery.headers,
            traceparent=event.traceparent,
            tracestate=event.tracestate,
            delivery_count=delivery.num_delivered,
            event_type=event.type,
            consumer_group=self.durable,
            stream=delivery.stream,
        ):
            await self.handler(event, delivery)

    async def _dead_letter(self, msg: Msg, delivery: Delivery, exc: BaseException) -> None:
        headers = dict(delivery.headers)
        for name in ("Nats-Msg-Id", "Nats-Expected-Stream"):
            headers.pop(name, None)
        headers.update(
            {
                "Backbone-Original-Subject": delivery.subject,
                "Backbone-Original-Stream": delivery.stream,
                "Backbone-Original-Sequence": str(delivery.stream_seq),
                "Backbone-Delivery-Count": str(delivery.num_delivered),
                "Backbone-Error-Type": type(exc).__name__,
                "Backbone-Error-Message": _header_safe(str(exc))[:_MAX_ERROR_CHARS],
                "Backbone-Consumer": self.durable,
                # Dedup: a crash between this publish and the term() re-sends the same dead letter.
                "Nats-Msg-Id": f"dlq:{delivery.stream}:{delivery.stream_seq}:{self.durable}",
            }
        )
        try:
            await self._js.publish(dlq_subject(delivery.subject), msg.data, headers=headers)
        except Exception:
            log.exception(
                "dead-lettering %s seq %d failed; will retry", delivery.subject, delivery.stream_seq
            )
            await msg.nak(delay=self.backoff_s[-1])
            return
        await msg.term()
        self.stats.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.record_dead_lettered(
                stream=delivery.stream, event_type=_event_type(delivery)
            )
        log.error(
            "dead-lettered %s seq %d after %d deliveries: %s: %s",
            delivery.subject,
            delivery.stream_seq,
            delivery.num_delivered,
            type(exc).__name__,
            exc,
        )

    async def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop fetching, wait for in-flight handlers (bounded), keep the durable consumer."""
        self._stopping.set()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(
                    asyncio.shield(self._runner), timeout=self.fetch_timeout_s + 1
                )
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        # Make sure acks left the socket before the caller closes the connection.
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)

    async def pending(self) -> int:
        """Messages not yet delivered plus delivered-but-unacknowledged."""
        info = await self._js.consumer_info(self.stream, self.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


def _event_type(delivery: Delivery) -> str:
    # The type is known even for undecodable binary-mode messages when the header is there.
    lowered = {k.lower(): v for k, v in delivery.headers.items()}
    return lowered.get("ce-type", "unknown")


def _header_safe(text: str) -> str:
    # Header values cannot carry CR/LF; keep the message readable on one line.
    return " ".join(text.split())


async def wait_until_idle(consumer: Consumer, *, timeout_s: float) -> None:
    """Wait until the consumer has nothing pending (tests and drains)."""
    deadline = time.monotonic() + timeout_s
    while await consumer.pending() > 0 or consumer.stats.in_flight:
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer {consumer.durable} still busy after {timeout_s}s")
        await asyncio.sleep(0.05)
