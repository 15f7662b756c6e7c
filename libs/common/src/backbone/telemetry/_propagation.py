"""W3C trace context over NATS headers and CloudEvents, and messaging spans (OTel semconv)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from opentelemetry.util.types import AttributeValue

# Attribute names from the OpenTelemetry messaging semantic conventions (v1.26+: operation.type
# "send"/"process", span name "{operation} {destination}"). Spelled out rather than imported from
# the incubating semconv module, whose import path is not stable.
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_MESSAGE_BODY_SIZE: Final = "messaging.message.body.size"
# System-specific attributes live under messaging.<system>.* per the conventions.
MESSAGING_NATS_STREAM: Final = "messaging.nats.stream"
MESSAGING_NATS_DELIVERY_COUNT: Final = "messaging.nats.message.delivery_count"
CLOUDEVENTS_EVENT_ID: Final = "cloudevents.event_id"
CLOUDEVENTS_EVENT_TYPE: Final = "cloudevents.event_type"
ERROR_TYPE: Final = "error.type"
MESSAGING_SYSTEM_NATS: Final = "nats"

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# In the CloudEvents NATS binary binding, extension attributes travel as "ce-<name>" headers.
_CE_PREFIX: Final = "ce-"

# The bus speaks W3C on purpose (not whatever OTEL_PROPAGATORS says): consumers in any language
# and the CloudEvents distributed-tracing extension both expect traceparent/tracestate.
_TRACE_CONTEXT: Final = TraceContextTextMapPropagator()
_BAGGAGE: Final = W3CBaggagePropagator()


class _HeaderGetter(Getter["Mapping[str, str]"]):
    """Reads NATS headers case-insensitively (producers in other languages capitalise them)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            lowered = key.lower()
            value = next((v for k, v in carrier.items() if k.lower() == lowered), None)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier.keys())


_GETTER: Final = _HeaderGetter()


def inject_trace_headers(headers: dict[str, str], *, context: Context | None = None) -> None:
    """Write ``traceparent``/``tracestate`` (and ``baggage``) of the current span into ``headers``.

    Nothing is written when there is no valid span in ``context`` (default: the current one).
    """
    _TRACE_CONTEXT.inject(headers, context=context)
    _BAGGAGE.inject(headers, context=context)


def trace_extensions(*, context: Context | None = None) -> dict[str, str]:
    """The CloudEvents distributed-tracing extension values for the current span.

    Returns ``{"traceparent": ..., "tracestate": ...}`` (``tracestate`` only when non-empty), or
    ``{}`` when no span is active; merge it into ``CloudEvent.extensions`` before publishing.
    """
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier, context=context)
    return {key: carrier[key] for key in (TRACEPARENT, TRACESTATE) if carrier.get(key)}


def extract_trace_context(
    headers: Mapping[str, str] | None,
    *,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Context:
    """The remote parent context carried by a message.

    Looks, in order, at the ``traceparent``/``tracestate`` NATS headers, the ``ce-traceparent``/
    ``ce-tracestate`` headers (a binary-mode CloudEvent's extension), then the ``traceparent``/
    ``tracestate`` arguments (the extension of a decoded, e.g. structured-mode, CloudEvent).
    ``baggage`` is taken from the headers. The result is built on an empty context, so a message
    without trace context yields a context without a span (the consumer span becomes a root).
    """
    context = Context()
    if headers:
        context = _BAGGAGE.extract(headers, context=context, getter=_GETTER)
        extracted = _TRACE_CONTEXT.extract(headers, context=context, getter=_GETTER)
        if _has_remote_span(extracted):
            return extracted
        ce_parent = _GETTER.get(headers, _CE_PREFIX + TRACEPARENT)
        if ce_parent:
            ce_state = _GETTER.get(headers, _CE_PREFIX + TRACESTATE)
            carrier = {TRACEPARENT: unquote(ce_parent[0])}
            if ce_state:
                carrier[TRACESTATE] = unquote(ce_state[0])
            extracted = _TRACE_CONTEXT.extract(carrier, context=context)
            if _has_remote_span(extracted):
                return extracted
    if traceparent:
        carrier = {TRACEPARENT: traceparent}
        if tracestate:
            carrier[TRACESTATE] = tracestate
        extracted = _TRACE_CONTEXT.extract(carrier, context=context)
        if _has_remote_span(extracted):
            return extracted
    return context


def _has_remote_span(context: Context) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


@contextmanager
def producer_span(
    tracer: trace.Tracer,
    *,
    subject: str,
    message_id: str,
    event_type: str | None = None,
    headers: dict[str, str] | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A ``PRODUCER`` span ``send <subject>`` around one publish, current inside the block.

    Attributes follow the messaging conventions (``messaging.system=nats``,
    ``messaging.destination.name``, ``messaging.message.id``, ``messaging.operation.type=send``)
    plus ``cloudevents.event_id``/``cloudevents.event_type``. When ``headers`` is given the span's
    context is injected into it, so the consumer's span becomes this span's child. An exception
    leaving the block marks the span as an error with ``error.type``.

    Args:
        tracer: Tracer to create the span with (``Telemetry.tracer()``).
        subject: The NATS subject published to.
        message_id: The message id (the CloudEvent id; also the ``Nats-Msg-Id`` basis).
        event_type: The CloudEvent type.
        headers: NATS headers about to be sent; trace context is written into them.
        attributes: Extra span attributes.
    """
    span_attributes: dict[str, AttributeValue] = {
        MESSAGING_SYSTEM: MESSAGING_SYSTEM_NATS,
        MESSAGING_DESTINATION_NAME: subject,
        MESSAGING_OPERATION_TYPE: "send",
        MESSAGING_OPERATION_NAME: "send",
        MESSAGING_MESSAGE_ID: message_id,
        CLOUDEVENTS_EVENT_ID: message_id,
    }
    if event_type is not None:
        span_attributes[CLOUDEVENTS_EVENT_TYPE] = event_type
    span_attributes.update(attributes or {})
    with tracer.start_as_current_span(
        f"send {subject}", kind=SpanKind.PRODUCER, attributes=span_attributes
    ) as span:
        if headers is not None:
            inject_trace_headers(headers)
        try:
            yield span
        except Exception as exc:
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            raise


@contextmanager
def consumer_span(
    tracer: trace.Tracer,
    *,
    subject: str,
    message_id: str,
    headers: Mapping[str, str] | None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    delivery_count: int | None = None,
    event_type: str | None = None,
    consumer_group: str | None = None,
    stream: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A ``CONSUMER`` span ``process <subject>`` around one handler run, current inside the block.

    The span's parent is the producer's context taken from the message (see
    :func:`extract_trace_context`), so publish and processing share one trace across processes;
    it also links to that context, as the conventions recommend for process spans. An exception
    leaving the block marks the span as an error with ``error.type``.

    Args:
        tracer: Tracer to create the span with.
        subject: The subject the message arrived on.
        message_id: The message id (the CloudEvent id).
        headers: The message's NATS headers (or ``None``).
        traceparent: The CloudEvent ``traceparent`` extension, used when headers carry none.
        tracestate: The CloudEvent ``tracestate`` extension.
        delivery_count: JetStream's delivery count (1 on the first delivery).
        event_type: The CloudEvent type.
        consumer_group: The durable consumer name shared by the replicas.
        stream: The JetStream stream the message came from.
        attributes: Extra span attributes.
    """
    parent = extract_trace_context(headers, traceparent=traceparent, tracestate=tracestate)
    parent_span_context = trace.get_current_span(parent).get_span_context()
    links = [Link(parent_span_context)] if parent_span_context.is_valid else []
    span_attributes: dict[str, AttributeValue] = {
        MESSAGING_SYSTEM: MESSAGING_SYSTEM_NATS,
        MESSAGING_DESTINATION_NAME: subject,
        MESSAGING_OPERATION_TYPE: "process",
        MESSAGING_OPERATION_NAME: "process",
        MESSAGING_MESSAGE_ID: message_id,
        CLOUDEVENTS_EVENT_ID: message_id,
    }
    if event_type is not None:
        span_attributes[CLOUDEVENTS_EVENT_TYPE] = event_type
    if delivery_count is not None:
        span_attributes[MESSAGING_NATS_DELIVERY_COUNT] = delivery_count
    if consumer_group is not None:
        span_attributes[MESSAGING_CONSUMER_GROUP_NAME] = consumer_group
    if stream is not None:
        span_attributes[MESSAGING_NATS_STREAM] = stream
    span_attributes.update(attributes or {})
    with tracer.start_as_current_span(
        f"process {subject}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=span_attributes,
        links=links,
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            raise
