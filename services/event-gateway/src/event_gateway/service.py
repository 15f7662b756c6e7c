"""The gateway's logic, free of HTTP: check, shape and publish events; tail a stream.

Handlers (``handlers.py``) parse requests and call :class:`GatewayService`; everything here
raises or returns :class:`~event_gateway.problems.ProblemError` values, which the handlers render
as RFC 9457 documents. The order of the checks for every event:

1. the principal's scopes cover its ``type`` (403);
2. the type is a valid subject and a declared stream captures it (400 / 422);
3. its data validates against the registered schema (422, naming the JSON path);
4. PII is masked or counted per policy (and, when masking changed the data, the stored form is
   validated again: nothing invalid is ever stored);
5. JetStream is reachable, the publish breaker is closed and the in-flight bound has room
   (503 with ``Retry-After`` otherwise; backpressure never becomes an unbounded queue);
6. publish and wait for the PubAck; only then is the event reported accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import nats.errors
from nats.js import api
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from backbone.errors import (
    BackboneError,
    EventError,
    MessageTooLargeError,
    NoStreamForSubjectError,
    PublishError,
    PublishTimeoutError,
)
from backbone.events import CloudEvent, decode_nats, to_json
from backbone.messaging import PublishResult, is_subject_pattern, subject_for
from backbone.resilience import CircuitOpenError, RateLimitedError
from backbone.schemas import MissingSchemaError, SchemaValidationError
from backbone.telemetry import producer_span, trace_extensions
from event_gateway.pii import DETECTED_EXTENSION, MASKED_EXTENSION, PiiPolicy, scan_data
from event_gateway.problems import ProblemError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from backbone.messaging import Publisher, StreamCatalog
    from backbone.resilience import CircuitBreaker, KeyedRateLimiter, RateLimiter
    from backbone.schemas import SchemaCache
    from backbone.telemetry import Metrics
    from event_gateway.auth import Principal

_log = logging.getLogger(__name__)

BATCH_SPAN_ATTRIBUTE: Final = "messaging.batch.message_count"
_ROUTE_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and concurrency limits (from the settings)."""

    max_event_bytes: int
    max_batch_bytes: int
    max_batch_events: int
    max_in_flight_events: int
    retry_after_s: int
    batch_deadline_s: float


class GatewayService:
    """Validates and publishes events; the handlers' only collaborator.

    Args:
        nc: Connected NATS client (reconnecting across outages).
        publisher: Publishes to the stream that captures each subject (PubAck before success).
        catalog: The declared streams.
        breaker: Circuit breaker around publishing.
        limits: Size and concurrency limits.
        metrics: The service's metrics registry.
        tracer: Tracer for producer spans.
        pii: PII policy.
        schemas: The schema cache, or ``None`` to skip data validation.
        key_limiter: Per-principal token buckets, or ``None``.
        global_limiter: One token bucket for every request, or ``None``.
    """

    def __init__(
        self,
        *,
        nc: Client,
        publisher: Publisher,
        catalog: StreamCatalog,
        breaker: CircuitBreaker,
        limits: Limits,
        metrics: Metrics,
        tracer: trace.Tracer,
        pii: PiiPolicy,
        schemas: SchemaCache | None = None,
        key_limiter: KeyedRateLimiter | None = None,
        global_limiter: RateLimiter | None = None,
        record_spans: bool = True,
    ) -> None:
        self.nc = nc
        self.publisher = publisher
        self.catalog = catalog
        self.breaker = breaker
        self.limits = limits
        self.metrics = metrics
        self.tracer = tracer
        self.pii = pii
        self.schemas = schemas
        self.key_limiter = key_limiter
        self.global_limiter = global_limiter
        self.record_spans = record_spans
        self.in_flight = 0
        self._routed: dict[str, str] = {}  # event type -> subject captured by a stream
        self._rejections = metrics.counter(
            "gateway_rejections", "Events and requests refused, by reason.", ("reason",)
        )
        self._pii_fields = metrics.counter(
            "gateway_pii_fields", "String fields with PII found, by mode.", ("mode",)
        )

    # -- request-level checks --------------------------------------------------------------

    def count_rejection(self, problem: ProblemError) -> None:
        """Count a refusal by reason (the handlers call this once per refused request/event)."""
        self._rejections.labels(problem.reason).inc()

    @staticmethod
    def reject(problem: ProblemError) -> ProblemError:
        """Identity; marks where the logic refuses (counted at the HTTP boundary)."""
        return problem

    def check_rate(self, principal: Principal) -> None:
        """Take one request permit from the principal's bucket and the global one.

        Raises:
            ProblemError: 429 with the limiter's ``Retry-After`` hint.
        """
        try:
            if self.key_limiter is not None:
                # max_wait 0: a request is refused, never parked in memory.
                self.key_limiter.acquire_sync(principal.name, max_wait_s=0.0)
            if self.global_limiter is not None:
                self.global_limiter.acquire_sync(max_wait_s=0.0)
        except RateLimitedError as exc:
            scope = "key" if exc.key is not None else "global"
            raise self.reject(
                ProblemError(
                    429,
                    "rate-limited",
                    f"{scope} rate limit exceeded; retry in {exc.retry_after_s:.2f}s",
                    retry_after_s=exc.retry_after_s,
                )
            ) from None

    def unavailable(self, detail: str, *, retry_after_s: float | None = None) -> ProblemError:
        """A 503 problem with ``Retry-After`` (counted)."""
        return self.reject(
            ProblemError(
                503,
                "unavailable",
                detail,
                retry_after_s=retry_after_s
                if retry_after_s is not None
                else self.limits.retry_after_s,
            )
        )

    def check_available(self, count: int) -> None:
        """Refuse at once when publishing cannot succeed now.

        Raises:
            ProblemError: 503 when NATS is disconnected, the schema cache is cold, or ``count``
                more events would exceed the in-flight bound.
        """
        if not self.nc.is_connected:
            raise self.unavailable("JetStream is unavailable (NATS connection lost); retry later")
        if self.schemas is not None and not self.schemas.ready:
            # Accepting now would store events nobody validated.
            raise self.unavailable("schema cache is still loading; retry shortly", retry_after_s=1)
        if self.in_flight + count > self.limits.max_in_flight_events:
            raise self.unavailable(
                "too many events in flight to JetStream (backpressure); retry later",
                retry_after_s=1,
            )

    # -- event checks ----------------------------------------------------------------------

    def prepare(self, event: CloudEvent, principal: Principal) -> tuple[CloudEvent, str]:
        """Check one event and return it as it will be stored, with its subject.

        Raises:
            ProblemError: 403 scope, 400 bad type, 422 no stream / schema violation.
        """
        event_type = event.type
        if not principal.allows(event_type):
            raise self.reject(
                ProblemError(
                    403,
                    "forbidden-type",
                    f"key {principal.name!r} may not publish type {event_type!r}",
                    attribute="type",
                    event_id=event.id,
                )
            )
        try:
            subject = self._routed.get(event_type) or self._route(event_type)
        except EventError as exc:
            raise self.reject(
                ProblemError(
                    400, "invalid-attribute", str(exc), attribute="type", event_id=event.id
                )
            ) from None
        except NoStreamForSubjectError as exc:
            raise self.reject(
                ProblemError(422, "no-stream", str(exc), attribute="type", event_id=event.id)
            ) from None
        self._validate(event)
        mode = self.pii.mode_for(event_type)
        if mode != "off" and event.data is not None and not isinstance(event.data, bytes):
            scanned = scan_data(event.data, mask=mode == "mask")
            if scanned.fields:
                self._pii_fields.labels(mode).inc(scanned.fields)
            if mode == "mask":
                if scanned.fields:
                    event = _replace_data(event, scanned.data)
                    self._validate(event, masked=True)
                event = event.with_extensions(**{MASKED_EXTENSION: scanned.fields})
            else:
                event = event.with_extensions(**{DETECTED_EXTENSION: scanned.fields})
        return event, subject

    def _route(self, event_type: str) -> str:
        """``subject_for`` + the stream check, remembered per type once they pass (both pure)."""
        subject = subject_for(event_type)
        self.catalog.stream_for(subject)
        if len(self._routed) >= _ROUTE_CACHE_MAX:
            self._routed.clear()
        self._routed[event_type] = subject
        return subject

    def _validate(self, event: CloudEvent, *, masked: bool = False) -> None:
        if self.schemas is None:
            return
        try:
            self.schemas.validate(event)
        except MissingSchemaError as exc:
            raise self.reject(
                ProblemError(422, "no-schema", str(exc), attribute="dataschema", event_id=event.id)
            ) from None
        except SchemaValidationError as exc:
            detail = str(exc)
            if masked:
                detail = f"after PII masking: {detail} (the schema rejects the masked value)"
            raise self.reject(
                ProblemError(422, "schema", detail, path=exc.path, event_id=event.id)
            ) from None

    # -- publishing ------------------------------------------------------------------------

    def _publish_problem(self, exc: BaseException, event_id: str | None) -> ProblemError:
        if isinstance(exc, CircuitOpenError):
            return self.unavailable(
                f"JetStream publishing is suspended (circuit breaker {exc.state}); retry later",
                retry_after_s=exc.remaining_wait_s if exc.remaining_wait_s > 0 else 1,
            )
        if isinstance(exc, nats.errors.MaxPayloadError):
            return self.reject(
                ProblemError(
                    413, "too-large", "event exceeds the NATS max payload", event_id=event_id
                )
            )
        if isinstance(exc, PublishTimeoutError | TimeoutError):
            return self.unavailable(
                "no acknowledgement from JetStream in time; the event may be retried safely "
                "(same id = deduplicated)"
            )
        if is_size_error(exc):
            return self.reject(ProblemError(413, "too-large", str(exc), event_id=event_id))
        return self.unavailable(f"JetStream did not store the event: {exc}")

    async def publish(
        self, event: CloudEvent, subject: str, *, traced: bool = True
    ) -> PublishResult:
        """Publish one prepared event under the breaker; return after the PubAck.

        ``traced`` False: the caller knows no span is current (no ``traceparent`` came in and
        spans are not recorded), so the trace-context lookup is skipped.

        Raises:
            ProblemError: 503 (breaker open, no PubAck, JetStream refused) or 413.
        """
        self.check_available(1)
        breaker = self.breaker
        try:
            breaker.acquire()
        except CircuitOpenError as exc:
            raise self._publish_problem(exc, event.id) from None
        self.in_flight += 1
        start = time.perf_counter()
        try:
            if self.record_spans:
                with producer_span(
                    self.tracer, subject=subject, message_id=event.id, event_type=event.type
                ):
                    result = await self.publisher.publish(_with_trace(event), subject=subject)
            else:
                result = await self.publisher.publish(
                    _with_trace(event) if traced else event, subject=subject
                )
        except (PublishError, nats.errors.Error, TimeoutError) as exc:
            elapsed = time.perf_counter() - start
            breaker.on_exception(elapsed, exc)
            self.metrics.record_publish_failure(event_type=event.type, error=type(exc).__name__)
            raise self._publish_problem(exc, event.id) from None
        except BaseException:
            breaker.release()
            raise
        finally:
            self.in_flight -= 1
        elapsed = time.perf_counter() - start
        breaker.on_success(elapsed)
        self.metrics.record_published(
            stream=result.stream,
            event_type=event.type,
            latency_s=elapsed,
            duplicate=result.duplicate,
        )
        return result

    async def publish_batch(
        self, events: Sequence[CloudEvent]
    ) -> list[PublishResult | ProblemError]:
        """Publish prepared events pipelined; per-event results in the same order.

        The whole batch is bounded by ``batch_deadline_s``: when it passes, every event not
        yet reported is answered 503 (some may be stored: a retry with the same ids is
        deduplicated), so no request waits on a dead server.

        Raises:
            ProblemError: 503 before anything is sent (disconnected, breaker open, no room).
        """
        if not events:
            return []
        self.check_available(len(events))
        breaker = self.breaker
        try:
            breaker.acquire()
        except CircuitOpenError as exc:
            raise self._publish_problem(exc, None) from None
        count = len(events)
        self.in_flight += count
        start = time.perf_counter()
        span = (self.tracer if self.record_spans else _NO_TRACER).start_span(
            "send batch",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                BATCH_SPAN_ATTRIBUTE: count,
            },
        )
        try:
            # Not recording: the caller's context (if any) is current and becomes the extension.
            context = trace.set_span_in_context(span) if self.record_spans else None
            extensions = trace_extensions(context=context)
            if extensions:
                events = [
                    e if e.traceparent is not None else e.with_extensions(**extensions)
                    for e in events
                ]
            async with asyncio.timeout(self.limits.batch_deadline_s):
                outcomes = await self.publisher.publish_many(events)
        except (PublishError, nats.errors.Error, TimeoutError) as exc:
            elapsed = time.perf_counter() - start
            breaker.on_exception(elapsed, exc)
            span.set_attribute("error.type", type(exc).__qualname__)
            problem = self._publish_problem(exc, None)
            return [problem] * count
        except BaseException:
            breaker.release()
            raise
        finally:
            self.in_flight -= count
            span.end()
        elapsed = time.perf_counter() - start
        results: list[PublishResult | ProblemError] = []
        failure: BackboneError | None = None
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, PublishResult):
                self.metrics.record_published(
                    stream=outcome.stream,
                    event_type=event.type,
                    latency_s=elapsed,
                    duplicate=outcome.duplicate,
                )
                results.append(outcome)
            else:
                failure = outcome
                self.metrics.record_publish_failure(
                    event_type=event.type, error=type(outcome).__name__
                )
                results.append(self._publish_problem(outcome, event.id))
        if failure is not None and not is_size_error(failure):
            breaker.on_exception(elapsed, failure)
        else:
            breaker.on_success(elapsed)
        return results

    # -- readiness -------------------------------------------------------------------------

    def nats_connected(self) -> bool:
        """Readiness: the NATS connection is up."""
        return bool(self.nc.is_connected)

    async def streams_present(self) -> bool:
        """Readiness: every declared stream exists on the server."""
        js = self.nc.jetstream()
        for spec in self.catalog.streams:
            await js.stream_info(spec.name)
        return True

    def schemas_warm(self) -> bool:
        """Readiness: the schema cache finished its initial load (true when validation is off)."""
        return self.schemas is None or self.schemas.ready

    # -- tail ------------------------------------------------------------------------------

    def stream_for_pattern(self, pattern: str) -> str:
        """The one stream whose subjects cover ``pattern`` (tail reads a single stream).

        Raises:
            ProblemError: 400 invalid pattern, 422 no stream or several streams.
        """
        if not is_subject_pattern(pattern):
            raise self.reject(
                ProblemError(
                    400,
                    "invalid-subject",
                    f"{pattern!r} is not a NATS subject pattern",
                    attribute="subject",
                )
            )
        matches = [spec.name for spec in self.catalog.streams_covering(pattern)]
        if len(matches) != 1:
            detail = (
                f"no declared stream captures {pattern!r}"
                if not matches
                else f"{pattern!r} spans several streams ({', '.join(matches)}); narrow it"
            )
            raise self.reject(ProblemError(422, "no-stream", detail, attribute="subject"))
        return matches[0]

    async def tail(
        self, pattern: str, *, after_seq: int | None, heartbeat_s: float
    ) -> AsyncIterator[tuple[int, bytes] | None]:
        """Yield ``(stream_seq, structured JSON)`` for each event on ``pattern``; ``None`` beats.

        Starts after ``after_seq`` (``Last-Event-ID`` resume) or with new events only.
        """
        stream = self.stream_for_pattern(pattern)
        js = self.nc.jetstream()
        if after_seq is None:
            policy, start = api.DeliverPolicy.NEW, None
        else:
            policy, start = api.DeliverPolicy.BY_START_SEQUENCE, after_seq + 1
        sub = await js.subscribe(
            pattern,
            stream=stream,
            ordered_consumer=True,
            deliver_policy=policy,
            config=api.ConsumerConfig(opt_start_seq=start) if start is not None else None,
        )
        try:
            while True:
                try:
                    msg: Msg = await sub.next_msg(timeout=heartbeat_s)
                except nats.errors.TimeoutError:
                    yield None
                    continue
                seq = msg.metadata.sequence.stream
                try:
                    event = decode_nats(msg.headers, msg.data)
                    body = to_json(event)
                except EventError as exc:
                    _log.warning("tail: undecodable message %s on %s: %s", seq, msg.subject, exc)
                    continue
                yield seq, body
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


_NO_TRACER: Final = trace.NoOpTracer()


def is_size_error(exc: BaseException) -> bool:
    """Whether a publish failed because the message is too large.

    That is the client's fault, not JetStream's: such failures are answered 413 and never trip
    the breaker.
    """
    # The publisher refuses oversized events itself, and maps JetStream's size refusal to the
    # same type; MaxPayloadError is nats-py's own check.
    return isinstance(exc, MessageTooLargeError | nats.errors.MaxPayloadError)


def _with_trace(event: CloudEvent) -> CloudEvent:
    """The event with the current trace context as its tracing extension, unless it has one."""
    if event.traceparent is not None or not trace.get_current_span().get_span_context().is_valid:
        return event
    return event.with_extensions(**trace_extensions())


def _replace_data(event: CloudEvent, data: Any) -> CloudEvent:  # noqa: ANN401 - any JSON value
    fields = event.to_dict()
    fields.pop("data_base64", None)
    fields["data"] = data
    return CloudEvent.from_dict(fields)
