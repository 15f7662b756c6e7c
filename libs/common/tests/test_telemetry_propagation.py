from __future__ import annotations

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import attach, detach
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from backbone.telemetry import (
    consumer_span,
    extract_trace_context,
    inject_trace_headers,
    producer_span,
    trace_extensions,
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


def _span_ids(context):
    span_context = trace.get_current_span(context).get_span_context()
    return span_context.trace_id, span_context.span_id


def test_inject_writes_w3c_traceparent_of_the_current_span(tracer):
    headers: dict[str, str] = {}
    with tracer.start_as_current_span("outer") as span:
        inject_trace_headers(headers)
        ctx = span.get_span_context()
    assert (
        headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )


def test_inject_without_a_span_writes_nothing():
    headers: dict[str, str] = {}
    inject_trace_headers(headers)
    assert headers == {}
    assert trace_extensions() == {}


def test_trace_extensions_match_the_headers(tracer):
    headers: dict[str, str] = {}
    with tracer.start_as_current_span("outer"):
        inject_trace_headers(headers)
        extensions = trace_extensions()
    assert extensions == {"traceparent": headers["traceparent"]}


def test_extract_prefers_headers_over_the_cloudevent_extension():
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    context = extract_trace_context({"traceparent": PARENT}, traceparent=other)
    assert _span_ids(context) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)


def test_extract_falls_back_to_the_extension_and_ce_headers():
    from_extension = extract_trace_context({"other": "x"}, traceparent=PARENT, tracestate="k=v")
    assert _span_ids(from_extension)[1] == 0xB7AD6B7169203331
    span_context = trace.get_current_span(from_extension).get_span_context()
    assert span_context.trace_state.get("k") == "v"
    assert span_context.is_remote
    from_binary_mode = extract_trace_context({"ce-traceparent": PARENT})
    assert _span_ids(from_binary_mode)[1] == 0xB7AD6B7169203331


def test_extract_reads_headers_case_insensitively_and_ignores_garbage():
    assert _span_ids(extract_trace_context({"Traceparent": PARENT}))[1] == 0xB7AD6B7169203331
    empty = extract_trace_context({"traceparent": "not-a-traceparent"})
    assert not trace.get_current_span(empty).get_span_context().is_valid
    assert not trace.get_current_span(extract_trace_context(None)).get_span_context().is_valid


def test_baggage_travels_in_headers(tracer):
    token = attach(baggage.set_baggage("tenant", "acme"))
    try:
        headers: dict[str, str] = {}
        with tracer.start_as_current_span("outer"):
            inject_trace_headers(headers)
    finally:
        detach(token)
    assert baggage.get_baggage("tenant", extract_trace_context(headers)) == "acme"


def test_consumer_span_is_a_child_of_the_producer_span_with_semconv_attributes(tracer, exporter):
    headers: dict[str, str] = {}
    with producer_span(
        tracer,
        subject="mcp.server.error",
        message_id="evt-1",
        event_type="mcp.server.error",
        headers=headers,
    ):
        pass
    # The consumer side runs with no current span (another process in real life).
    with consumer_span(
        tracer,
        subject="mcp.server.error",
        message_id="evt-1",
        headers=headers,
        delivery_count=2,
        consumer_group="workers",
        stream="MCP_EVENTS",
    ):
        pass
    producer, consumer = exporter.get_finished_spans()
    assert producer.name == "send mcp.server.error"
    assert producer.kind is SpanKind.PRODUCER
    assert dict(producer.attributes) == {
        "messaging.system": "nats",
        "messaging.destination.name": "mcp.server.error",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": "evt-1",
        "cloudevents.event_id": "evt-1",
        "cloudevents.event_type": "mcp.server.error",
    }
    assert consumer.name == "process mcp.server.error"
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.nats.message.delivery_count"] == 2
    assert consumer.attributes["messaging.consumer.group.name"] == "workers"
    assert consumer.attributes["messaging.nats.stream"] == "MCP_EVENTS"
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]


def test_consumer_span_uses_the_cloudevent_traceparent_when_headers_have_none(tracer, exporter):
    with consumer_span(tracer, subject="a.b", message_id="1", headers={}, traceparent=PARENT):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.parent.span_id == 0xB7AD6B7169203331


def test_consumer_span_without_context_is_a_root_even_inside_another_span(tracer, exporter):
    with (
        tracer.start_as_current_span("poll"),
        consumer_span(tracer, subject="a.b", message_id="1", headers=None),
    ):
        pass
    consumer = exporter.get_finished_spans()[0]
    assert consumer.parent is None
    assert consumer.links == ()


def test_an_exception_marks_the_span_with_error_type(tracer, exporter):
    with (
        pytest.raises(KeyError),
        consumer_span(tracer, subject="a.b", message_id="1", headers=None),
    ):
        raise KeyError("boom")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "KeyError"
    assert span.events[0].name == "exception"


async def test_one_trace_spans_a_real_jetstream_publish_and_consume(nats_client, tracer, exporter):
    js = nats_client.jetstream()
    await js.add_stream(name="TELEMETRY_TEST", subjects=["teltest.>"])
    subject = "teltest.created"
    headers: dict[str, str] = {}
    with producer_span(tracer, subject=subject, message_id="evt-42", headers=headers):
        await js.publish(subject, b"{}", headers={**headers, "Nats-Msg-Id": "evt-42"})
    subscription = await js.pull_subscribe(subject, durable="teltest")
    (message,) = await subscription.fetch(1, timeout=5)
    with consumer_span(
        tracer,
        subject=message.subject,
        message_id=message.headers["Nats-Msg-Id"],
        headers=message.headers,
        delivery_count=message.metadata.num_delivered,
    ):
        await message.ack()
    producer, consumer = exporter.get_finished_spans()
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes["messaging.nats.message.delivery_count"] == 1
