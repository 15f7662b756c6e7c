"""End-to-end trace: HTTP request -> gateway spans -> JetStream -> consumer process span.

Both processes export over OTLP/HTTP to a receiver run by the test; every span of the chain must
carry the trace id of the caller's ``traceparent``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.responses import Response
from starlette.routing import Route

from backbone.ops import OpsServer
from event_gateway.testing import GatewayProcess

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    import nats
    from backbone.events import decode_nats
    from backbone.settings import BackboneSettings
    from backbone.telemetry import consumer_span, setup_telemetry

    async def main(url: str, endpoint: str) -> None:
        settings = BackboneSettings(telemetry={"otlp_endpoint": endpoint,
                                               "otlp_protocol": "http/protobuf"})
        telemetry = setup_telemetry(settings, service_name="trace-test-consumer")
        nc = await nats.connect(url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("mcp.>", durable="trace-test", stream="MCP_EVENTS")
        [msg] = await sub.fetch(1, timeout=10)
        event = decode_nats(msg.headers, msg.data)
        with consumer_span(telemetry.tracer(), subject=msg.subject, message_id=event.id,
                           headers=msg.headers, traceparent=event.traceparent,
                           event_type=event.type, stream="MCP_EVENTS"):
            await msg.ack()
        await nc.close()
        telemetry.shutdown()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


class Receiver:
    """An OTLP/HTTP trace receiver collecting ``(service, name, kind, trace_id, span, parent)``."""

    def __init__(self) -> None:
        self.spans: list[dict[str, str | int]] = []
        self.server = OpsServer(extra_routes=[Route("/v1/traces", self.export, methods=["POST"])])

    async def export(self, request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        for resource_spans in message.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                        }
                    )
        return Response(
            ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf"
        )


async def test_trace_spans_gateway_and_consumer_processes(nats_server, streams, tmp_path):
    receiver = Receiver()
    await receiver.server.start()
    gateway = GatewayProcess(
        nats_server.url,
        tmp_path,
        env={
            "BACKBONE_TELEMETRY__OTLP_ENDPOINT": receiver.server.url,
            "BACKBONE_TELEMETRY__OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        },
    )
    try:
        await asyncio.to_thread(gateway.start)
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            resp = await client.post(
                "/v1/events",
                content=b'{"error": "Connection timeout"}',
                headers={
                    "ce-specversion": "1.0",
                    "ce-type": "mcp.server.error",
                    "ce-source": "/claude/mcp/filesystem",
                    "ce-id": "traced-1",
                    "content-type": "application/json",
                    "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                    **gateway.headers,
                },
            )
        assert resp.status_code == 202, resp.text
        assert resp.headers["x-trace-id"] == TRACE_ID
        consumer = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", CONSUMER, nats_server.url, receiver.server.url],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert consumer.returncode == 0, consumer.stderr.decode()[-2000:]

        deadline = time.monotonic() + 15
        while True:
            services = {s["service"] for s in receiver.spans if s["trace_id"] == TRACE_ID}
            if {"event-gateway", "trace-test-consumer"} <= services:
                break
            assert time.monotonic() < deadline, receiver.spans
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(gateway.terminate)
        await receiver.server.stop()

    traced = [s for s in receiver.spans if s["trace_id"] == TRACE_ID]
    server = next(s for s in traced if s["name"] == "POST /v1/events")
    producer = next(s for s in traced if s["name"] == "send mcp.server.error")
    consumer_span = next(s for s in traced if s["service"] == "trace-test-consumer")
    assert server["parent_id"] == PARENT_ID  # continues the caller's trace
    assert producer["parent_id"] == server["span_id"]
    assert consumer_span["name"] == "process mcp.server.error"
    assert consumer_span["parent_id"] == producer["span_id"]  # via the event's traceparent
