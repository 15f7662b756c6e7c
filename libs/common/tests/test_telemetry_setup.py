from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbone.settings import BackboneSettings
from backbone.telemetry import TelemetryError, setup_telemetry

_OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "BACKBONE_TELEMETRY__OTLP_ENDPOINT",
    "BACKBONE_TELEMETRY__OTLP_PROTOCOL",
    "BACKBONE_TELEMETRY__SERVICE_NAME",
)


@pytest.fixture(autouse=True)
def _clean_otel_env(monkeypatch):
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


def test_spans_go_to_the_given_exporter_with_the_service_resource():
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(service_name="svc-a", exporter=exporter, set_global=False)
    with telemetry.tracer().start_as_current_span("work"):
        pass
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["work"]
    resource = spans[0].resource.attributes
    assert resource["service.name"] == "svc-a"
    assert resource["service.instance.id"] == telemetry.instance_id
    telemetry.shutdown()
    telemetry.shutdown()  # second call is harmless


def test_no_endpoint_means_no_exporter_and_spans_still_have_ids():
    telemetry = setup_telemetry(BackboneSettings(), service_name="quiet", set_global=False)
    assert telemetry.exporter is None
    assert telemetry.endpoint is None
    with telemetry.tracer().start_as_current_span("x") as span:
        assert span.get_span_context().is_valid
    telemetry.shutdown()


def test_settings_service_name_wins_over_env_and_argument(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert setup_telemetry(service_name="arg", set_global=False).service_name == "from-env"
    settings = BackboneSettings(telemetry={"service_name": "from-settings"})
    telemetry = setup_telemetry(settings, service_name="arg", set_global=False)
    assert telemetry.service_name == "from-settings"


def test_settings_http_endpoint_builds_an_http_exporter_on_the_traces_path():
    settings = BackboneSettings(
        telemetry={"otlp_endpoint": "http://127.0.0.1:4318", "otlp_protocol": "http/protobuf"}
    )
    telemetry = setup_telemetry(settings, service_name="svc", set_global=False)
    assert isinstance(telemetry.exporter, HttpSpanExporter)
    assert telemetry.endpoint == "http://127.0.0.1:4318/v1/traces"
    telemetry.shutdown()


def test_settings_grpc_endpoint_builds_a_grpc_exporter():
    settings = BackboneSettings(telemetry={"otlp_endpoint": "http://127.0.0.1:4317"})
    telemetry = setup_telemetry(settings, service_name="svc", set_global=False)
    assert isinstance(telemetry.exporter, GrpcSpanExporter)
    telemetry.shutdown()


def test_standard_otel_variables_are_honoured(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    telemetry = setup_telemetry(BackboneSettings(), service_name="svc", set_global=False)
    assert isinstance(telemetry.exporter, HttpSpanExporter)
    assert telemetry.endpoint == "http://127.0.0.1:4318/v1/traces"
    telemetry.shutdown()


def test_otel_traces_exporter_none_disables_export(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert setup_telemetry(service_name="svc", set_global=False).exporter is None


def test_bad_endpoint_is_a_clear_error():
    settings = BackboneSettings(telemetry={"otlp_endpoint": "jaeger:4317"})
    with pytest.raises(TelemetryError, match="OTLP endpoint"):
        setup_telemetry(settings, service_name="svc", set_global=False)


def test_global_provider_is_installed_once_and_repeated_setup_is_quiet(caplog):
    # The first provider may become the process-wide one: give it no exporter, so spans other
    # tests create through the global API are neither stored nor warned about.
    first = setup_telemetry(service_name="one")
    second = setup_telemetry(service_name="two", exporter=InMemorySpanExporter())
    # Only one of all calls in this process may install the global provider.
    assert not second.is_global
    if first.is_global:
        assert trace.get_tracer_provider() is first.provider
    assert "Overriding of current TracerProvider" not in caplog.text
    exporter = second.exporter
    assert isinstance(exporter, InMemorySpanExporter)
    with second.tracer().start_as_current_span("mine"):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["mine"]
    second.shutdown()


class _Receiver(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_are_exported_over_otlp_http_to_a_real_receiver():
    _Receiver.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        settings = BackboneSettings(
            telemetry={
                "otlp_endpoint": f"http://127.0.0.1:{port}",
                "otlp_protocol": "http/protobuf",
            }
        )
        telemetry = setup_telemetry(settings, service_name="exported", set_global=False)
        with telemetry.tracer().start_as_current_span("exported-span"):
            pass
        started = time.monotonic()
        assert telemetry.force_flush(timeout_s=10)
        telemetry.shutdown()
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()
        server.server_close()
    assert _Receiver.requests, "the receiver got no export"
    path, content_type, body = _Receiver.requests[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    resource_spans = request.resource_spans[0]
    service = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}[
        "service.name"
    ]
    names = [s.name for ss in resource_spans.scope_spans for s in ss.spans]
    assert service == "exported"
    assert names == ["exported-span"]
