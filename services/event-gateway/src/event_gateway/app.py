"""The Starlette application: routes, request telemetry, and the lifespan that wires NATS.

``create_app(settings)`` builds everything that can fail on configuration (keys, streams file)
at once, so a bad setting stops the process before it listens; the lifespan then connects to
NATS, starts the schema cache and the metrics reporter, and tears them down after uvicorn has
finished the requests in flight (graceful shutdown on SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.context import attach, detach
from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    get_current_span,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from backbone.messaging import Publisher, load_catalog
from backbone.ops import ops_routes
from backbone.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    KeyedRateLimiter,
    RateLimiter,
    RateLimiterConfig,
    ResilienceRegistry,
)
from backbone.schemas import SchemaCache
from backbone.service import ServiceRuntime, tune_gc
from backbone.settings import load_settings
from backbone.telemetry import Metrics, extract_trace_context, setup_telemetry
from event_gateway.auth import KeyStore
from event_gateway.handlers import Handlers, Runtime
from event_gateway.pii import PiiPolicy
from event_gateway.problems import ProblemError
from event_gateway.service import GatewayService, Limits, is_size_error
from event_gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from backbone.messaging import StreamCatalog
    from backbone.telemetry import Telemetry

SERVICE_NAME: Final = "event-gateway"
TRACE_ID_HEADER: Final = b"x-trace-id"
_UNTRACED: Final = frozenset({"/livez", "/readyz", "/metrics"})

_log = logging.getLogger(__name__)


def _route_label(path: str) -> str:
    if path.startswith("/v1/webhooks/"):
        return "/v1/webhooks/github" if path == "/v1/webhooks/github" else "/v1/webhooks/{name}"
    if path in {"/v1/events", "/v1/events/stream", "/openapi.yaml", "/openapi.json"}:
        return path
    return "other"


class RequestTelemetry:
    """Pure ASGI middleware: tracing, request metrics and the ingest fast path.

    * A SERVER span per request continues the caller's ``traceparent``; the trace id is returned
      in ``X-Trace-Id`` and ``traceresponse``. When spans are not exported (no OTLP endpoint),
      no span is recorded: the caller's context is only made current, so events still carry it.
    * Requests are counted by route and status, with a duration histogram.
    * ``POST /v1/events`` goes straight to its handler: Starlette's router and exception
      middlewares cost more per request than the whole publish (see bench/bench_gateway.py).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        telemetry: Telemetry,
        metrics: Metrics,
        handlers: Handlers,
        record_spans: bool,
    ) -> None:
        self.app = app
        self.tracer = telemetry.tracer("event_gateway")
        self.record_spans = record_spans
        self.handlers = handlers
        # Hot instruments: one lock per request for both, not prometheus_client's one each.
        self._lock = metrics.lock
        self.requests = metrics.hot_counter(
            "gateway_requests", "HTTP requests by route and status.", ("route", "status")
        )
        self.duration = metrics.hot_histogram(
            "gateway_request_duration_seconds", "HTTP request duration.", ("route",)
        )
        self._labels: dict[tuple[str, int], tuple[tuple[str, str], tuple[str]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI scope."""
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in {b"traceparent", b"tracestate"}:
                carrier[name.decode("latin-1")] = value.decode("latin-1")
        route = _route_label(scope["path"])
        method = scope["method"]
        parent = extract_trace_context(carrier) if carrier else None
        start = time.perf_counter()
        status = [500]  # the response status, once known
        trace_headers: list[tuple[bytes, bytes]] = []
        try:
            if self.record_spans:
                with self.tracer.start_as_current_span(
                    f"{method} {route}",
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes={"http.request.method": method, "http.route": route},
                ) as span:
                    trace_headers.extend(_trace_headers(span.get_span_context()))
                    try:
                        await self._dispatch(scope, receive, send, route, trace_headers, status)
                    finally:
                        _end_server_span(span, status[0])
            elif parent is not None:
                trace_headers.extend(_trace_headers(get_current_span(parent).get_span_context()))
                token = attach(parent)
                try:
                    await self._dispatch(scope, receive, send, route, trace_headers, status)
                finally:
                    detach(token)
            elif route == "/v1/events" and method == "POST":
                # The common case, without the _dispatch frame (see there).
                status[0] = await self.handlers.post_events_asgi(scope, receive, send, traced=False)
            else:
                await self._dispatch(scope, receive, send, route, trace_headers, status)
        finally:
            self._count(route, status[0], time.perf_counter() - start)

    async def _dispatch(  # noqa: PLR0917 - one request's state, passed, not allocated
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        trace_headers: list[tuple[bytes, bytes]],
        status: list[int],
    ) -> None:
        if route == "/v1/events" and scope["method"] == "POST":
            # The ingest fast path reports its status and adds the trace headers itself, so its
            # two sends skip the wrapper below.
            status[0] = await self.handlers.post_events_asgi(
                scope, receive, send, extra_headers=trace_headers
            )
            return

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if trace_headers:
                    message["headers"] = [*message.get("headers", []), *trace_headers]
            await send(message)

        await self.app(scope, receive, send_with_trace)

    def _count(self, route: str, status_code: int, duration_s: float) -> None:
        labels = self._labels.get((route, status_code))
        if labels is None:
            labels = self._labels[(route, status_code)] = ((route, str(status_code)), (route,))
        with self._lock:
            self.requests.inc(labels[0])
            self.duration.observe(labels[1], duration_s)


class _GatewayApp(Starlette):
    """Starlette, with ``POST /v1/events`` handed straight to :class:`RequestTelemetry`.

    Starlette's outermost ``ServerErrorMiddleware`` wraps every send in a closure; on the ingest
    path, which renders its own problems, that is pure per-request cost. An exception escaping
    there still reaches the server, which answers 500 as that middleware would.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI scope."""
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/events"
            and scope["method"] == "POST"
            and self.middleware_stack is not None
        ):
            telemetry = self.middleware_stack.app  # type: ignore[attr-defined]
            if isinstance(telemetry, RequestTelemetry):
                scope["app"] = self
                await telemetry(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _end_server_span(span: Span, status_code: int) -> None:
    span.set_attribute("http.response.status_code", status_code)
    if status_code >= 500:  # noqa: PLR2004 - server errors mark the span
        span.set_status(Status(StatusCode.ERROR))


def _trace_headers(context: SpanContext) -> list[tuple[bytes, bytes]]:
    if not context.is_valid:
        return []
    trace_id = format(context.trace_id, "032x").encode("ascii")
    span_id = format(context.span_id, "016x").encode("ascii")
    return [
        (TRACE_ID_HEADER, trace_id),
        (b"traceresponse", b"00-%s-%s-%02x" % (trace_id, span_id, context.trace_flags)),
    ]


async def _http_problem(_: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    reason = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return ProblemError(status, reason, str(detail)).response()


def create_app(
    settings: GatewaySettings | None = None,
    *,
    telemetry: Telemetry | None = None,
    span_exporter: SpanExporter | None = None,
    tune_gc_after_start: bool = False,
) -> Starlette:
    """Build the gateway application.

    Args:
        settings: Settings; read from the environment when omitted.
        telemetry: Tracing to use (tests pass one); created from settings otherwise.
        span_exporter: Exporter for a telemetry created here (tests pass an in-memory one).
        tune_gc_after_start: Once started, freeze the long-lived heap and space out young
            collections (:func:`backbone.service.tune_gc`); for the process entry point, not
            for an app embedded in a larger process such as a test run.

    Raises:
        ConfigError: invalid settings, key files or streams file.
    """
    settings = settings or load_settings(GatewaySettings)
    section = settings.gateway
    keys = KeyStore.from_settings(settings)
    catalog = load_catalog(settings.streams_file)
    pii = PiiPolicy(section.pii.policy, default_mode=section.pii.default_mode)
    metrics = Metrics()
    runtime = Runtime(settings, keys)
    runtime.github_secret = _github_secret(settings)
    if telemetry is None:
        telemetry = setup_telemetry(settings, service_name=SERVICE_NAME, exporter=span_exporter)
    handlers = Handlers(runtime)
    # Spans that go nowhere are skipped on the hot path; trace context still flows through.
    record_spans = telemetry.exporter is not None

    lifespan = _lifespan(
        settings,
        runtime=runtime,
        catalog=catalog,
        metrics=metrics,
        telemetry=telemetry,
        pii=pii,
        record_spans=record_spans,
        tune_gc_after_start=tune_gc_after_start,
    )

    routes = [
        Route("/v1/events", handlers.post_events, methods=["POST"]),
        Route("/v1/events/stream", handlers.tail, methods=["GET"]),
        Route("/v1/webhooks/github", handlers.post_github, methods=["POST"]),
        Route("/v1/webhooks/{name}", handlers.post_webhook, methods=["POST"]),
        Route("/openapi.yaml", handlers.openapi_yaml, methods=["GET"]),
        Route("/openapi.json", handlers.openapi_json, methods=["GET"]),
        *ops_routes(
            metrics,
            readiness={
                "nats": lambda: _service_check(runtime, "nats"),
                "streams": lambda: _service_check(runtime, "streams"),
                "schemas": lambda: _service_check(runtime, "schemas"),
            },
        ),
    ]
    app = _GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_problem},
    )
    app.add_middleware(
        RequestTelemetry,
        telemetry=telemetry,
        metrics=metrics,
        handlers=handlers,
        record_spans=record_spans,
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.telemetry = telemetry
    return app


def _lifespan(
    settings: GatewaySettings,
    *,
    runtime: Runtime,
    catalog: StreamCatalog,
    metrics: Metrics,
    telemetry: Telemetry,
    pii: PiiPolicy,
    record_spans: bool,
    tune_gc_after_start: bool,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """Connect, start the schema cache and the reporter; undo it all after the last request.

    The shared :class:`~backbone.service.ServiceRuntime` does what every service does (NATS with
    backoff, metrics snapshots, resilience remote control and events, ordered shutdown); uvicorn
    owns the signals and this app serves the ops routes itself.
    """
    section = settings.gateway

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        resilience = ResilienceRegistry()
        service_runtime = ServiceRuntime(
            SERVICE_NAME,
            settings,
            metrics=metrics,
            ops_server=False,
            handle_signals=False,
            resilience=resilience,
            catalog=catalog,
            telemetry=telemetry,
        )
        service_runtime.add_gauge("gateway_in_flight_events", lambda: float(_in_flight(runtime)))
        context = await service_runtime.start()
        if context is None:  # stopped before NATS answered
            await service_runtime.stop()
            yield
            return
        nc = context.nc
        cache: SchemaCache | None = None
        try:
            if section.schema_validation:
                cache = await SchemaCache.start(
                    nc.jetstream(), wait_ready_s=None, unknown_type_policy=section.unknown_types
                )
                with contextlib.suppress(TimeoutError):
                    await cache.wait_ready(section.schema_wait_ready_s)
                if not cache.ready:
                    _log.warning("schema cache not warm yet; events are refused until it is")
            publisher = Publisher(
                nc,
                catalog=catalog,
                timeout_s=section.publish_timeout_s,
                attempts=section.publish_attempts,
                retry_wait_s=0.05,
            )
            service = _build_service(
                settings,
                nc=nc,
                publisher=publisher,
                catalog=catalog,
                metrics=metrics,
                telemetry=telemetry,
                pii=pii,
                cache=cache,
                record_spans=record_spans,
            )
            # Under remote control (`backbone resilience ... --service event-gateway`) and the
            # anomaly detector's allowlisted actions.
            for instance in (service.breaker, service.key_limiter, service.global_limiter):
                if instance is not None:
                    resilience.register(instance)
            runtime.service = service
            if tune_gc_after_start:
                frozen = tune_gc()
                _log.debug("froze %d long-lived objects", frozen)
            _log.info("event gateway ready", extra={"keys": len(runtime.keys)})
            yield
        finally:
            runtime.service = None
            if cache is not None:
                await cache.stop()
            await service_runtime.stop()  # reporter, control, resilience events, NATS drain
            telemetry.force_flush(timeout_s=5.0)

    return lifespan


async def _service_check(runtime: Runtime, name: str) -> bool:
    service = runtime.service
    if service is None:
        return False
    if name == "nats":
        return service.nats_connected()
    if name == "streams":
        return await service.streams_present()
    return service.schemas_warm()


def _in_flight(runtime: Runtime) -> int:
    return runtime.service.in_flight if runtime.service is not None else 0


def _github_secret(settings: GatewaySettings) -> bytes | None:
    section = settings.gateway
    if section.github_secret is not None:
        return section.github_secret.get_secret_value().encode("utf-8")
    if section.github_secret_file is not None:
        from backbone.errors import ConfigError  # noqa: PLC0415 - only on this path

        try:
            secret = section.github_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {section.github_secret_file}: {exc}",
                variable="BACKBONE_GATEWAY__GITHUB_SECRET_FILE",
            ) from exc
        return secret.encode("utf-8") or None
    return None


def _build_service(
    settings: GatewaySettings,
    *,
    nc: Any,  # noqa: ANN401 - nats Client (untyped library)
    publisher: Publisher,
    catalog: Any,  # noqa: ANN401 - StreamCatalog
    metrics: Metrics,
    telemetry: Telemetry,
    pii: PiiPolicy,
    cache: SchemaCache | None,
    record_spans: bool,
) -> GatewayService:
    section = settings.gateway
    breaker = CircuitBreaker(
        "event-gateway-publish",
        CircuitBreakerConfig(
            sliding_window_size=section.breaker.sliding_window_size,
            minimum_calls=section.breaker.minimum_calls,
            failure_rate_threshold=section.breaker.failure_rate_threshold,
            wait_in_open_s=section.breaker.wait_in_open_s,
            permitted_calls_in_half_open=1,
        ),
        # A too-large message says nothing about JetStream's health.
        ignore_exception=is_size_error,
    )
    limits = section.rate_limit
    key_limiter = global_limiter = None
    if limits.enabled:
        key_limiter = KeyedRateLimiter(
            "event-gateway-key",
            RateLimiterConfig(
                rate_per_s=limits.per_key_per_s,
                burst=limits.per_key_burst,
                max_wait_s=0.0,
                max_keys=limits.max_keys,
            ),
        )
        global_limiter = RateLimiter(
            "event-gateway-global",
            RateLimiterConfig(
                rate_per_s=limits.global_per_s, burst=limits.global_burst, max_wait_s=0.0
            ),
        )
    return GatewayService(
        nc=nc,
        publisher=publisher,
        catalog=catalog,
        breaker=breaker,
        limits=Limits(
            max_event_bytes=section.max_event_bytes,
            max_batch_bytes=section.max_batch_bytes,
            max_batch_events=section.max_batch_events,
            max_in_flight_events=section.max_in_flight_events,
            retry_after_s=section.retry_after_s,
            batch_deadline_s=section.publish_timeout_s * (section.publish_attempts + 1),
        ),
        metrics=metrics,
        tracer=telemetry.tracer("event_gateway"),
        pii=pii,
        schemas=cache,
        key_limiter=key_limiter,
        global_limiter=global_limiter,
        record_spans=record_spans,
    )
