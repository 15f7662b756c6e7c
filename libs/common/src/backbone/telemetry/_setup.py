"""OpenTelemetry tracing set up from Backbone settings and the standard ``OTEL_*`` variables."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from backbone.telemetry._errors import TelemetryError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.sdk.trace.export import SpanExporter

    from backbone.settings import BackboneSettings

OtlpProtocol = Literal["grpc", "http/protobuf"]

_log = logging.getLogger(__name__)

# The global tracer provider may be set once per process (OpenTelemetry refuses and warns on a
# second attempt); remember whether we did it so repeated setups (tests, embedded services) are
# quiet and keep working with the provider they were given.
_global_lock = threading.Lock()
_global_set = False

_TRACES_PATH = "/v1/traces"


def default_instance_id() -> str:
    """An identifier of this process: ``<hostname>-<pid>`` (the pod name in Kubernetes)."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Telemetry:
    """The tracing set up by :func:`setup_telemetry` for one service.

    Attributes:
        provider: The SDK tracer provider holding the service resource and span processors.
        service_name: The resolved ``service.name``.
        instance_id: The resolved ``service.instance.id`` (also used in metrics snapshots).
        exporter: The span exporter in use, or ``None`` when spans are not exported.
        endpoint: The OTLP endpoint spans go to, when an OTLP exporter is configured.
        is_global: Whether this provider was installed as the process-wide tracer provider.
    """

    provider: TracerProvider
    service_name: str
    instance_id: str
    exporter: SpanExporter | None = None
    endpoint: str | None = None
    is_global: bool = False
    _closed: bool = field(default=False, repr=False)

    def tracer(self, name: str = "backbone") -> trace.Tracer:
        """A tracer from this provider (``name`` is the instrumentation scope)."""
        return self.provider.get_tracer(name)

    def force_flush(self, *, timeout_s: float = 10.0) -> bool:
        """Export every finished span now; ``False`` when the timeout expired first."""
        return self.provider.force_flush(timeout_millis=int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flush pending spans and stop the exporters (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self.provider.force_flush()
        self.provider.shutdown()


def setup_telemetry(
    settings: BackboneSettings | None = None,
    *,
    service_name: str,
    exporter: SpanExporter | None = None,
    batch_export: bool | None = None,
    set_global: bool = True,
    resource_attributes: Mapping[str, str] | None = None,
) -> Telemetry:
    """Create a tracer provider for ``service_name`` and, when an endpoint is set, an OTLP exporter.

    Where spans go, in order of precedence:

    1. ``exporter`` when given (tests pass an ``InMemorySpanExporter``);
    2. ``settings.telemetry.otlp_endpoint`` (``BACKBONE_TELEMETRY__OTLP_ENDPOINT``), a base URL
       such as ``http://jaeger:4317`` (grpc) or ``http://jaeger:4318`` (http/protobuf, to which
       ``/v1/traces`` is appended), with ``settings.telemetry.otlp_protocol``;
    3. the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` with
       ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` (``grpc`` unless said otherwise);
    4. nowhere: spans are still created (trace ids reach logs and NATS headers) but nothing is
       exported and no connection is attempted. ``OTEL_SDK_DISABLED=true`` or
       ``OTEL_TRACES_EXPORTER=none`` also mean nowhere.

    The service name is ``settings.telemetry.service_name``, else ``OTEL_SERVICE_NAME``, else the
    ``service_name`` argument; ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER`` are honoured
    by the SDK as usual.

    Every call builds a new, independent provider. The first call with ``set_global=True`` also
    installs it as the process-wide provider (OpenTelemetry allows that once per process); later
    calls leave the global alone, so use :meth:`Telemetry.tracer` rather than
    ``trace.get_tracer`` when you need spans to reach *this* provider.

    Args:
        settings: Backbone settings; ``None`` relies on ``OTEL_*`` variables only.
        service_name: The service's default name (``event-gateway``, ``outbox-relay``, ...).
        exporter: A span exporter to use instead of OTLP.
        batch_export: Export in background batches (``True``) or synchronously as spans end
            (``False``). Default: batches for OTLP, synchronous for an ``exporter`` passed in, so
            tests see spans as soon as they end.
        set_global: Install the provider globally if no Backbone provider was installed yet.
        resource_attributes: Extra resource attributes (``deployment.environment``, ...).

    Raises:
        TelemetryError: When the endpoint is not an ``http(s)://host:port`` URL.
    """
    tele = settings.telemetry if settings is not None else None
    name = (
        (tele.service_name if tele is not None else None)
        or os.environ.get("OTEL_SERVICE_NAME")
        or service_name
    )
    instance_id = default_instance_id()
    attributes: dict[str, str] = {SERVICE_INSTANCE_ID: instance_id}
    attributes.update(resource_attributes or {})
    attributes[SERVICE_NAME] = name
    provider = TracerProvider(resource=Resource.create(attributes))

    endpoint: str | None = None
    if exporter is None and not _exporting_disabled():
        exporter, endpoint = _otlp_exporter(settings)
        if batch_export is None:
            batch_export = True
    if exporter is not None:
        processor = BatchSpanProcessor(exporter) if batch_export else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)

    is_global = set_global and _install_global(provider)
    _log.debug(
        "telemetry ready",
        extra={"service": name, "otlp_endpoint": endpoint, "global_provider": is_global},
    )
    return Telemetry(
        provider=provider,
        service_name=name,
        instance_id=instance_id,
        exporter=exporter,
        endpoint=endpoint,
        is_global=is_global,
    )


def _install_global(provider: TracerProvider) -> bool:
    global _global_set  # noqa: PLW0603 - one process-wide flag by nature
    with _global_lock:
        if _global_set:
            return False
        _global_set = True
    trace.set_tracer_provider(provider)
    return True


def _exporting_disabled() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return True
    return os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"


def _otlp_exporter(settings: BackboneSettings | None) -> tuple[SpanExporter | None, str | None]:
    tele = settings.telemetry if settings is not None else None
    if tele is not None and tele.otlp_endpoint:
        protocol: str = tele.otlp_protocol
        if "otlp_protocol" not in tele.model_fields_set:
            protocol = _env_protocol() or protocol
        return _build_exporter(tele.otlp_endpoint, protocol, base_url=True)
    env_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not env_endpoint:
        return None, None
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        # The signal-specific variable is a full URL already (spec: used as-is).
        return _build_exporter(env_endpoint, _env_protocol() or "grpc", base_url=False)
    return _build_exporter(env_endpoint, _env_protocol() or "grpc", base_url=True)


def _env_protocol() -> str | None:
    value = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    return value.strip() if value else None


def _build_exporter(endpoint: str, protocol: str, *, base_url: bool) -> tuple[SpanExporter, str]:
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise TelemetryError(
            f"OTLP endpoint {endpoint!r} is not an http(s)://host:port URL "
            "(BACKBONE_TELEMETRY__OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT)"
        )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415 - grpc is heavy; import only when used
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=endpoint, insecure=parts.scheme == "http"), endpoint
    if protocol in {"http/protobuf", "http"}:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 - import only when used
            OTLPSpanExporter as HttpSpanExporter,
        )

        url = endpoint
        if base_url and not parts.path.rstrip("/").endswith(_TRACES_PATH):
            url = endpoint.rstrip("/") + _TRACES_PATH
        return HttpSpanExporter(endpoint=url), url
    raise TelemetryError(f"unsupported OTLP protocol {protocol!r} (use grpc or http/protobuf)")
