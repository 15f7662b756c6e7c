"""Publishing CloudEvents to JetStream: success only after the PubAck, deduplicated by id."""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import nats.errors
import nats.js.errors

from backbone.errors import BackboneError, MessageTooLargeError, PublishError, PublishTimeoutError
from backbone.events import dedup_id, encode_nats
from backbone.messaging._jetstream import sender_for
from backbone.messaging._streams import subject_for
from backbone.resilience import Retry, RetryBudgetExhaustedError, RetryConfig

if TYPE_CHECKING:
    from collections.abc import Coroutine, Mapping, Sequence

    from nats.aio.client import Client
    from nats.js.api import PubAck
    from opentelemetry.trace import Tracer

    from backbone.events import CloudEvent
    from backbone.messaging._streams import StreamCatalog
    from backbone.telemetry import Metrics

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"

# Failures worth another attempt: the message may not have reached the stream, and because every
# publish carries its dedup id a retry that does reach it twice is dropped by JetStream.
_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


_SUBJECT_CACHE_MAX = 4096
# nats-py's default `publish_async_max_pending` per JetStream context.
_NATS_PY_MAX_PENDING = 4000
# (subject, stream, headers, payload): PreparedMessage's fields
_Message = tuple[str, str, dict[str, str], bytes]


# JetStream's "message size exceeds maximum allowed" (JSStreamMessageExceedsMaximumErr).
_JS_MESSAGE_TOO_LARGE = 10054


def refused(
    exc: nats.js.errors.APIError, *, subject: str, event_id: str | None, size_bytes: int = -1
) -> PublishError:
    """The error for a message JetStream refused (a too-large one gets its own type)."""
    description = exc.description or str(exc)
    if exc.err_code == _JS_MESSAGE_TOO_LARGE:
        return MessageTooLargeError(
            f"JetStream refused {subject}: {description}",
            size_bytes=size_bytes,
            limit_bytes=-1,
            subject=subject,
            event_id=event_id,
        )
    return PublishError(
        f"JetStream refused {subject}: {description}", subject=subject, event_id=event_id
    )


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where JetStream stored an event (reported only after its PubAck)."""

    id: str
    subject: str
    stream: str
    seq: int
    duplicate: bool

    def to_dict(self) -> dict[str, object]:
        """The JSON shape used by the CLI and the gateway."""
        return {
            "id": self.id,
            "subject": self.subject,
            "stream": self.stream,
            "seq": self.seq,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """An event encoded for JetStream: subject, target stream, headers (dedup id) and payload."""

    subject: str
    stream: str
    headers: dict[str, str]
    payload: bytes


class Publisher:
    """Publishes CloudEvents to the stream that captures their subject.

    * ``Nats-Msg-Id`` is :func:`backbone.events.dedup_id` (source + id), so JetStream removes
      repeats inside the stream's duplicate window;
    * ``Nats-Expected-Stream`` names the stream from ``deploy/streams.yaml``, and an event whose
      subject no stream captures is refused before anything is sent;
    * a result is returned only after the PubAck; timeouts and connection failures are retried
      (bounded) — safe thanks to the dedup id;
    * with a ``tracer``, each publish is a ``send <subject>`` PRODUCER span whose context rides in
      the NATS headers and the event's ``traceparent`` extension; with ``metrics``, publishes,
      failures and PubAck latency are recorded.

    Args:
        nc: A connected nats-py client.
        catalog: The declared streams.
        mode: NATS content mode for events (binary headers or structured JSON).
        timeout_s: How long to wait for each PubAck.
        attempts: Total attempts per event for retryable failures.
        retry_wait_s: Pause between attempts (doubled each time).
        tracer: OpenTelemetry tracer for producer spans (None: no spans).
        metrics: Where to record publish metrics (None: not recorded).
        retry: The retry policy of one publish (``backbone.resilience.Retry``, with its budget);
            by default ``attempts`` tries on timeouts and reconnects, backing off from
            ``retry_wait_s``.
    """

    def __init__(
        self,
        nc: Client,
        *,
        catalog: StreamCatalog,
        mode: Literal["binary", "structured"] = "binary",
        timeout_s: float = 5.0,
        attempts: int = 3,
        retry_wait_s: float = 0.2,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        retry: Retry | None = None,
    ) -> None:
        self._nc = nc
        # The connection's JetStream sender (backbone.messaging._jetstream): nats-py's wire bytes
        # without its per-call Python header encoding.
        self._sender = sender_for(nc)
        self.catalog = catalog
        self.mode: Literal["binary", "structured"] = mode
        self.timeout_s = timeout_s
        self.retry = retry or Retry(
            "publish",
            RetryConfig(
                max_attempts=max(1, attempts),
                wait_initial_s=retry_wait_s,
                wait_max_s=max(retry_wait_s, 2.0),
                retry_exceptions=_RETRYABLE,
            ),
        )
        self.tracer = tracer
        self.metrics = metrics
        # event type -> subject_for(type): the check is pure and costs more than the encoding.
        self._subjects: dict[str, str] = {}

    def prepare(
        self,
        event: CloudEvent,
        *,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PreparedMessage:
        """Route and encode ``event`` without sending it (the outbox stores this form).

        Raises:
            EventError: the type cannot be a subject.
            NoStreamForSubjectError: no stream captures the subject.
            MessageTooLargeError: over the stream's ``max_msg_size`` or the server's max payload.
        """
        return PreparedMessage(*self._prepare(event, subject, headers))

    def _prepare(
        self, event: CloudEvent, subject: str | None, headers: Mapping[str, str] | None
    ) -> _Message:
        """:meth:`prepare` as a plain tuple (the send paths skip the frozen dataclass)."""
        if not subject:
            event_type = event.type
            subject = self._subjects.get(event_type)
            if subject is None:
                subject = subject_for(event_type)  # validates; pure, so remembered
                if len(self._subjects) >= _SUBJECT_CACHE_MAX:
                    self._subjects.clear()
                self._subjects[event_type] = subject
        spec = self.catalog.stream_for(subject)
        encoded_headers, payload = encode_nats(event, mode=self.mode)
        if headers:
            encoded_headers.update(headers)
        encoded_headers[MSG_ID_HEADER] = dedup_id(event)
        encoded_headers[EXPECTED_STREAM_HEADER] = spec.name
        limit = self._nc.max_payload or 1 << 20
        if 0 < spec.max_msg_size < limit:
            limit = spec.max_msg_size
        if len(payload) > limit:
            raise MessageTooLargeError(
                f"event is {len(payload)} bytes; the limit for {spec.name} is {limit} bytes",
                size_bytes=len(payload),
                limit_bytes=limit,
                subject=subject,
                event_id=event.id,
            )
        return subject, spec.name, encoded_headers, payload

    @staticmethod
    def _result(event: CloudEvent, subject: str, ack: PubAck) -> PublishResult:
        return PublishResult(
            id=event.id,
            subject=subject,
            stream=ack.stream,
            seq=ack.seq,
            duplicate=bool(ack.duplicate),
        )

    def publish(
        self,
        event: CloudEvent,
        *,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, PublishResult]:
        """Publish one event and wait for its PubAck (``await publisher.publish(event)``).

        Args:
            event: The event.
            subject: Override the subject derived from the type (it must still be captured).
            headers: Extra NATS headers (e.g. trace context from an HTTP request).

        Raises:
            NoStreamForSubjectError: no stream captures the subject (nothing was sent).
            MessageTooLargeError: the event is over the size limit (nothing was sent).
            PublishTimeoutError: no PubAck after every attempt (a later retry deduplicates).
            PublishError: JetStream refused the message (e.g. stream mismatch).
        """
        # A plain function handing back the coroutine: without a tracer, the caller awaits
        # `_publish` itself, one coroutine frame fewer on the gateway's per-request path.
        if self.tracer is None:
            return self._publish(event, subject, headers)
        return self._publish_traced(self.tracer, event, subject, headers)

    async def _publish_traced(
        self,
        tracer: Tracer,
        event: CloudEvent,
        subject: str | None,
        headers: Mapping[str, str] | None,
    ) -> PublishResult:
        # Imported here: OpenTelemetry costs ~0.1 s at import, which CLI commands never need.
        from backbone.telemetry import producer_span, trace_extensions  # noqa: PLC0415

        with producer_span(
            tracer,
            subject=subject or subject_for(event.type),
            message_id=event.id,
            event_type=event.type,
        ):
            context = trace_extensions()
            if context:
                event = event.with_extensions(**context)
            return await self._publish(event, subject, {**(headers or {}), **context})

    async def _publish(
        self, event: CloudEvent, subject: str | None, headers: Mapping[str, str] | None
    ) -> PublishResult:
        started = time.perf_counter()
        timeout_s = self.timeout_s
        try:
            message = self._prepare(event, subject, headers)
            subject, _stream, encoded_headers, payload = message
            try:
                ack = await self.retry.call(
                    self._sender.publish, subject, payload, encoded_headers, timeout_s=timeout_s
                )
            except Exception as exc:
                error = self._send_error(exc, event, subject, len(payload))
                if error is exc:
                    raise
                raise error from exc
        except BackboneError as exc:
            if self.metrics is not None:
                self.metrics.record_publish_failure(event_type=event.type, error=type(exc).__name__)
            raise
        if self.metrics is not None:
            self.metrics.record_published(
                stream=ack.stream,
                event_type=event.type,
                latency_s=time.perf_counter() - started,
                duplicate=bool(ack.duplicate),
            )
        return self._result(event, subject, ack)

    def _send_error(
        self, exc: Exception, event: CloudEvent, subject: str, size_bytes: int
    ) -> Exception:
        """What a failed send raises: the publisher's error for nats-py's, others unchanged."""
        if isinstance(exc, RetryBudgetExhaustedError):
            return PublishTimeoutError(
                f"no PubAck for {subject}; retry budget exhausted: {exc.__cause__!r}",
                subject=subject,
                event_id=event.id,
            )
        if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
            return PublishError(
                f"no JetStream stream answered for {subject} (streams not applied? "
                "run `backbone streams apply`)",
                subject=subject,
                event_id=event.id,
            )
        if isinstance(exc, _RETRYABLE):
            return PublishTimeoutError(
                f"no PubAck for {subject} after {self.retry.config.max_attempts} attempts: {exc!r}",
                subject=subject,
                event_id=event.id,
            )
        if isinstance(exc, nats.js.errors.APIError):
            return refused(exc, subject=subject, event_id=event.id, size_bytes=size_bytes)
        return exc

    async def publish_many(
        self, events: Sequence[CloudEvent], *, window: int = 512
    ) -> list[PublishResult | BackboneError]:
        """Publish events pipelined, at most ``window`` unacknowledged at a time.

        Order of storage follows the order of ``events`` (one connection, one writer), except for
        events whose first attempt failed and were retried after the others. Each entry of the
        result is the :class:`PublishResult` of the event at the same index, or the error that
        prevented it (after the same bounded retries as :meth:`publish`); nothing is reported
        stored that was not acknowledged. One ``send`` span covers the whole batch.
        """
        span = (
            self.tracer.start_as_current_span(f"send batch ({len(events)})")
            if self.tracer is not None
            else nullcontext()
        )
        with span:
            return await self._publish_many(events, window)

    async def _publish_many(
        self, events: Sequence[CloudEvent], window: int
    ) -> list[PublishResult | BackboneError]:
        batch = _Batch(self, events, max(1, min(window, _NATS_PY_MAX_PENDING)))
        await self._send_pipelined(batch)
        if batch.pending:
            _done, late = await asyncio.wait(list(batch.pending), timeout=self.timeout_s)
            for future in late:
                future.cancel()
                batch.settle(future)  # now, not when the callback runs: it is retried below
        results = batch.results
        # Stragglers (timeouts, reconnects) go through the sequential path with its retries.
        for index in sorted(batch.retry):
            try:
                results[index] = await self._publish(events[index], None, None)
            except BackboneError as exc:
                results[index] = exc
        return [r if r is not None else PublishError("not attempted") for r in results]

    async def _send_pipelined(self, batch: _Batch) -> None:
        # At most `batch.size` unacknowledged publishes: waiting only when the window is full
        # keeps the per-event cost O(1). Each PubAck is turned into its result by a
        # done-callback, which also drops the future: what stays alive is O(window), not O(n)
        # (a batch holding every future and ack to the end costs full GC passes over them).
        publish_async = self._sender.publish_async
        prepare = self._prepare
        done = batch.done
        pending = batch.pending
        for index, event in enumerate(batch.events):
            try:
                subject, _stream, headers, payload = prepare(event, None, None)
            except BackboneError as exc:  # an event that cannot be routed fails alone
                batch.results[index] = exc
                continue
            if len(pending) >= batch.size:
                await self._wait_for_slot(batch)
            try:
                future = await publish_async(subject, payload, headers)
            except _RETRYABLE:
                batch.retry.append(index)
                continue
            pending[future] = (index, subject, time.perf_counter())
            future.add_done_callback(done)

    async def _wait_for_slot(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        while len(batch.pending) >= batch.size:
            batch.waiter = waiter = loop.create_future()
            try:
                await asyncio.wait_for(waiter, timeout=self.timeout_s)
            except TimeoutError:
                # No PubAck within the timeout: give the outstanding ones up for now; they are
                # retried one by one afterwards (the dedup id makes that safe).
                for future in list(batch.pending):
                    future.cancel()
                    batch.settle(future)
            finally:
                batch.waiter = None


class _Batch:
    """The state of one ``publish_many``: results by index, retries, unacknowledged futures."""

    __slots__ = ("events", "pending", "publisher", "results", "retry", "size", "waiter")

    def __init__(self, publisher: Publisher, events: Sequence[CloudEvent], size: int) -> None:
        self.publisher = publisher
        self.events = events
        self.size = size
        self.results: list[PublishResult | BackboneError | None] = [None] * len(events)
        self.retry: list[int] = []
        # future -> (index in the batch, subject, send time)
        self.pending: dict[asyncio.Future[PubAck], tuple[int, str, float]] = {}
        self.waiter: asyncio.Future[None] | None = None

    def done(self, future: asyncio.Future[PubAck]) -> None:
        """Done-callback of each publish: record its outcome and free its slot."""
        self.settle(future)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def settle(self, future: asyncio.Future[PubAck]) -> None:
        """Record a finished (or given-up) publish; a second call for it does nothing."""
        sent = self.pending.pop(future, None)
        if sent is None:
            return
        index, subject, started = sent
        event = self.events[index]
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, nats.js.errors.APIError):
            self.results[index] = refused(exc, subject=subject, event_id=event.id)
        elif future.cancelled() or exc is not None:
            self.retry.append(index)
        else:
            ack = future.result()
            publisher = self.publisher
            self.results[index] = publisher._result(event, subject, ack)  # noqa: SLF001
            if publisher.metrics is not None:
                publisher.metrics.record_published(
                    stream=ack.stream,
                    event_type=event.type,
                    latency_s=time.perf_counter() - started,
                    duplicate=bool(ack.duplicate),
                )
