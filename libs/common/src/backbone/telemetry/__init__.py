"""Tracing, structured logs and metrics for every Backbone process.

- :func:`setup_telemetry` creates the OpenTelemetry tracer provider of a service (OTLP export only
  when an endpoint is configured).
- :func:`inject_trace_headers`, :func:`extract_trace_context`, :func:`trace_extensions` carry W3C
  trace context over NATS headers and the CloudEvents distributed-tracing extension;
  :func:`producer_span` / :func:`consumer_span` create messaging spans per the OpenTelemetry
  semantic conventions, so one trace spans gateway → stream → consumer.
- :func:`configure_logging` writes JSON lines carrying ``trace_id``/``span_id``.
- :class:`Metrics` holds the Prometheus instruments of the messaging layer in a registry of its
  own, and :class:`MetricsReporter` publishes them as ``system.metrics.<service>`` snapshots
  (shape documented in ``backbone.telemetry._reporter``).
"""

from backbone.telemetry._errors import TelemetryError
from backbone.telemetry._histogram import LogHistogram
from backbone.telemetry._logging import JsonFormatter, TextFormatter, configure_logging
from backbone.telemetry._metrics import Metrics, WindowStats
from backbone.telemetry._propagation import (
    consumer_span,
    extract_trace_context,
    inject_trace_headers,
    producer_span,
    trace_extensions,
)
from backbone.telemetry._reporter import (
    METRICS_EVENT_TYPE_PREFIX,
    GaugeCallback,
    MetricsReporter,
    metrics_event_type,
)
from backbone.telemetry._setup import Telemetry, default_instance_id, setup_telemetry

__all__ = [
    "METRICS_EVENT_TYPE_PREFIX",
    "GaugeCallback",
    "JsonFormatter",
    "LogHistogram",
    "Metrics",
    "MetricsReporter",
    "Telemetry",
    "TelemetryError",
    "TextFormatter",
    "WindowStats",
    "configure_logging",
    "consumer_span",
    "default_instance_id",
    "extract_trace_context",
    "inject_trace_headers",
    "metrics_event_type",
    "producer_span",
    "setup_telemetry",
    "trace_extensions",
]
