"""Prometheus instruments for the messaging layer plus cheap windowed aggregates for snapshots."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from backbone.telemetry._errors import TelemetryError
from backbone.telemetry._histogram import LogHistogram
from backbone.telemetry._hot import HotCounter, HotHistogram

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from prometheus_client.metrics import MetricWrapperBase

# Buckets for messaging latencies in seconds: sub-millisecond publishes up to slow handlers.
LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_NAME_RE: Final = re.compile(r"^[a-z_][a-z0-9_]*$")

# Names of the windowed snapshot metrics; a gauge may not shadow one of them.
SNAPSHOT_METRIC_NAMES: Final = (
    "events_published",
    "events_published_per_s",
    "publish_errors",
    "publish_errors_per_s",
    "publish_duplicates_per_s",
    "publish_latency_p50_ms",
    "publish_latency_p90_ms",
    "publish_latency_p99_ms",
    "events_consumed",
    "events_consumed_per_s",
    "handler_errors",
    "handler_errors_per_s",
    "handler_error_ratio",
    "dead_lettered",
    "dead_lettered_per_s",
    "handler_latency_p50_ms",
    "handler_latency_p90_ms",
    "handler_latency_p99_ms",
    "handler_latency_max_ms",
)

_HotT = TypeVar("_HotT", HotCounter, HotHistogram)
_InstrumentT = TypeVar("_InstrumentT", Counter, Gauge, Histogram, HotCounter, HotHistogram)


class _Window:
    """Mutable counts of the open window (guarded by the owner's lock)."""

    __slots__ = (
        "consumed",
        "dead_lettered",
        "duplicates",
        "handler_failures",
        "handler_latency",
        "publish_failures",
        "publish_latency",
        "published",
    )

    def __init__(self) -> None:
        self.published = 0
        self.publish_failures = 0
        self.duplicates = 0
        self.consumed = 0
        self.handler_failures = 0
        self.dead_lettered = 0
        self.publish_latency = LogHistogram()
        self.handler_latency = LogHistogram()


@dataclass(frozen=True)
class WindowStats:
    """What happened between two calls of :meth:`Metrics.take_window`.

    Attributes:
        elapsed_s: Length of the window by the metrics clock.
        published: Events acknowledged by JetStream (duplicates included).
        publish_failures: Publishes that failed (not acknowledged).
        duplicates: Publishes JetStream reported as duplicates.
        consumed: Messages whose handler ran (successfully or not).
        handler_failures: Handler runs that raised.
        dead_lettered: Messages moved to the dead-letter stream.
        publish_latency: Publish→PubAck latencies in this window.
        handler_latency: Handler durations in this window.
        gauges: The latest value of every gauge set with :meth:`Metrics.set_gauge`.
    """

    elapsed_s: float
    published: int = 0
    publish_failures: int = 0
    duplicates: int = 0
    consumed: int = 0
    handler_failures: int = 0
    dead_lettered: int = 0
    publish_latency: LogHistogram = field(default_factory=LogHistogram)
    handler_latency: LogHistogram = field(default_factory=LogHistogram)
    gauges: dict[str, float] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, float]:
        """The flat ``{name: value}`` mapping published in metrics snapshots (see the reporter)."""
        elapsed_s = self.elapsed_s if self.elapsed_s > 0 else 1.0

        def per_s(count: int) -> float:
            return count / elapsed_s

        def ms(hist: LogHistogram, fraction: float) -> float:
            return hist.percentile(fraction) * 1000.0

        values: dict[str, float] = {
            "events_published": float(self.published),
            "events_published_per_s": per_s(self.published),
            "publish_errors": float(self.publish_failures),
            "publish_errors_per_s": per_s(self.publish_failures),
            "publish_duplicates_per_s": per_s(self.duplicates),
            "publish_latency_p50_ms": ms(self.publish_latency, 0.50),
            "publish_latency_p90_ms": ms(self.publish_latency, 0.90),
            "publish_latency_p99_ms": ms(self.publish_latency, 0.99),
            "events_consumed": float(self.consumed),
            "events_consumed_per_s": per_s(self.consumed),
            "handler_errors": float(self.handler_failures),
            "handler_errors_per_s": per_s(self.handler_failures),
            "handler_error_ratio": (
                self.handler_failures / self.consumed if self.consumed else 0.0
            ),
            "dead_lettered": float(self.dead_lettered),
            "dead_lettered_per_s": per_s(self.dead_lettered),
            "handler_latency_p50_ms": ms(self.handler_latency, 0.50),
            "handler_latency_p90_ms": ms(self.handler_latency, 0.90),
            "handler_latency_p99_ms": ms(self.handler_latency, 0.99),
            "handler_latency_max_ms": self.handler_latency.max * 1000.0,
        }
        values.update(self.gauges)
        return values


class Metrics:
    """Prometheus instruments of one process, in a registry of its own, plus windowed aggregates.

    Each instance owns a fresh :class:`~prometheus_client.CollectorRegistry` (never the global
    default), so tests and embedded services may create as many as they like. The messaging layer
    records through the ``record_*`` methods, which update both the Prometheus instruments (for
    ``/metrics``) and in-process counters and latency histograms that :meth:`take_window` turns
    into rates and percentiles for the ``system.metrics.<service>`` snapshots.

    Prometheus series (namespace ``backbone`` by default):

    - ``backbone_events_published_total{stream,type}``
    - ``backbone_publish_duplicates_total{stream}``
    - ``backbone_publish_failures_total{type,error}``
    - ``backbone_publish_latency_seconds{stream}`` (histogram)
    - ``backbone_events_consumed_total{stream,type}``
    - ``backbone_handler_failures_total{stream,type,error}``
    - ``backbone_events_dead_lettered_total{stream,type}``
    - ``backbone_handler_latency_seconds{stream,type}`` (histogram)
    - one gauge ``backbone_<name>`` per :meth:`set_gauge` name (e.g. ``consumer_pending``)

    Args:
        namespace: Prefix of every series name.
        clock: Monotonic clock in seconds, injectable for tests.
    """

    def __init__(
        self, *, namespace: str = "backbone", clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not _NAME_RE.match(namespace):
            raise TelemetryError(f"invalid metrics namespace {namespace!r}")
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._instruments: dict[str, MetricWrapperBase | HotCounter | HotHistogram] = {}
        self._gauge_values: dict[str, float] = {}
        self._window = _Window()
        self._window_start = clock()

        # Per-message series are hot instruments recorded under self.lock (one lock per
        # record call instead of prometheus_client's one per instrument and bucket).
        self.events_published = self.hot_counter(
            "events_published", "Events acknowledged by JetStream.", ("stream", "type")
        )
        self.publish_duplicates = self.hot_counter(
            "publish_duplicates", "Publishes JetStream dropped as duplicates.", ("stream",)
        )
        self.publish_failures = self.counter(
            "publish_failures", "Publishes that were not acknowledged.", ("type", "error")
        )
        self.publish_latency = self.hot_histogram(
            "publish_latency_seconds", "Publish to PubAck latency.", ("stream",)
        )
        self.events_consumed = self.hot_counter(
            "events_consumed", "Messages handed to a handler.", ("stream", "type")
        )
        self.handler_failures = self.counter(
            "handler_failures", "Handler runs that raised.", ("stream", "type", "error")
        )
        self.events_dead_lettered = self.counter(
            "events_dead_lettered", "Messages moved to the dead-letter stream.", ("stream", "type")
        )
        self.handler_latency = self.hot_histogram(
            "handler_latency_seconds", "Handler duration.", ("stream", "type")
        )

    @property
    def lock(self) -> threading.Lock:
        """The lock hot instruments are recorded under (``with metrics.lock: counter.inc(...)``)."""
        return self._lock

    # -- recording (hot path of publishers and consumers) -----------------------------------

    def record_published(
        self,
        *,
        stream: str,
        event_type: str,
        latency_s: float | None = None,
        duplicate: bool = False,
    ) -> None:
        """Count one acknowledged publish (``duplicate`` when JetStream reported a repeat)."""
        with self._lock:
            self.events_published.inc((stream, event_type))
            window = self._window
            window.published += 1
            if duplicate:
                self.publish_duplicates.inc((stream,))
                window.duplicates += 1
            if latency_s is not None:
                self.publish_latency.observe((stream,), latency_s)
                window.publish_latency.record(latency_s)

    def record_publish_failure(self, *, event_type: str, error: str) -> None:
        """Count one publish that was not acknowledged; ``error`` is the exception's class name."""
        self.publish_failures.labels(event_type, error).inc()
        with self._lock:
            window = self._window
            window.publish_failures += 1

    def record_handled(
        self, *, stream: str, event_type: str, latency_s: float, error: str | None = None
    ) -> None:
        """Count one handler run and its duration; ``error`` names the exception when it raised."""
        if error is not None:
            self.handler_failures.labels(stream, event_type, error).inc()
        with self._lock:
            self.events_consumed.inc((stream, event_type))
            self.handler_latency.observe((stream, event_type), latency_s)
            window = self._window
            window.consumed += 1
            if error is not None:
                window.handler_failures += 1
            window.handler_latency.record(latency_s)

    def record_dead_lettered(self, *, stream: str, event_type: str) -> None:
        """Count one message moved to the dead-letter stream."""
        self.events_dead_lettered.labels(stream, event_type).inc()
        with self._lock:
            window = self._window
            window.dead_lettered += 1

    def set_gauge(self, name: str, value: float) -> None:
        """Set a level such as ``consumer_pending``: a Prometheus gauge and a snapshot value.

        Raises:
            TelemetryError: When ``name`` is not ``[a-z_][a-z0-9_]*`` or shadows a snapshot metric.
        """
        if name in SNAPSHOT_METRIC_NAMES:
            raise TelemetryError(f"gauge name {name!r} is reserved for a snapshot metric")
        gauge = self.gauge(name, f"Level reported as {name}.")
        gauge.set(value)
        with self._lock:
            self._gauge_values[name] = float(value)

    def clear_gauge(self, name: str) -> None:
        """Leave ``name`` out of snapshots until it is set again (its reader failed).

        The Prometheus gauge keeps its last value; scrapers see staleness by other means.
        """
        with self._lock:
            self._gauge_values.pop(name, None)

    # -- windows ----------------------------------------------------------------------------

    def take_window(self) -> WindowStats:
        """Close the current window and start a new one; the closed window's stats are returned.

        Only one consumer (the :class:`MetricsReporter`) should call this: each call resets the
        counts, so rates are "per second since the previous call".
        """
        now = self._clock()
        with self._lock:
            closed = self._window
            elapsed_s = max(now - self._window_start, 0.0)
            self._window = _Window()
            self._window_start = now
            gauges = dict(self._gauge_values)
        return WindowStats(
            elapsed_s=elapsed_s,
            published=closed.published,
            publish_failures=closed.publish_failures,
            duplicates=closed.duplicates,
            consumed=closed.consumed,
            handler_failures=closed.handler_failures,
            dead_lettered=closed.dead_lettered,
            publish_latency=closed.publish_latency,
            handler_latency=closed.handler_latency,
            gauges=gauges,
        )

    # -- factories for service-specific instruments ------------------------------------------

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """A counter in this registry (``<namespace>_<name>_total``); same name → same counter.

        Raises:
            TelemetryError: When the name is invalid or taken by a different instrument.
        """
        return self._instrument(
            Counter,
            name,
            labelnames,
            lambda: Counter(
                name, documentation, labelnames, namespace=self.namespace, registry=self.registry
            ),
        )

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """A gauge in this registry (``<namespace>_<name>``); same name → same gauge.

        Raises:
            TelemetryError: When the name is invalid or taken by a different instrument.
        """
        return self._instrument(
            Gauge,
            name,
            labelnames,
            lambda: Gauge(
                name, documentation, labelnames, namespace=self.namespace, registry=self.registry
            ),
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        """A histogram in this registry (``<namespace>_<name>``); same name → same histogram.

        Raises:
            TelemetryError: When the name is invalid or taken by a different instrument.
        """
        return self._instrument(
            Histogram,
            name,
            labelnames,
            lambda: Histogram(
                name,
                documentation,
                labelnames,
                namespace=self.namespace,
                registry=self.registry,
                buckets=tuple(buckets),
            ),
        )

    def hot_counter(
        self, name: str, documentation: str, labelnames: Sequence[str] = ()
    ) -> HotCounter:
        """A counter for a per-message path, incremented under :attr:`lock`; same name → same.

        Raises:
            TelemetryError: When the name is invalid or taken by a different instrument.
        """
        return self._instrument(
            HotCounter,
            name,
            labelnames,
            lambda: self._registered(
                HotCounter(f"{self.namespace}_{name}", documentation, labelnames, self._lock)
            ),
        )

    def hot_histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> HotHistogram:
        """A histogram for a per-message path, observed under :attr:`lock`; same name → same.

        Raises:
            TelemetryError: When the name is invalid or taken by a different instrument.
        """
        return self._instrument(
            HotHistogram,
            name,
            labelnames,
            lambda: self._registered(
                HotHistogram(
                    f"{self.namespace}_{name}",
                    documentation,
                    labelnames,
                    self._lock,
                    buckets=buckets,
                )
            ),
        )

    def _registered(self, instrument: _HotT) -> _HotT:
        self.registry.register(instrument)
        return instrument

    def _instrument(
        self,
        kind: type[_InstrumentT],
        name: str,
        labelnames: Sequence[str],
        create: Callable[[], _InstrumentT],
    ) -> _InstrumentT:
        if not _NAME_RE.match(name):
            raise TelemetryError(f"invalid metric name {name!r}: use [a-z_][a-z0-9_]*")
        with self._lock:
            existing = self._instruments.get(name)
            if existing is None:
                instrument = create()
                self._instruments[name] = instrument
                return instrument
        # prometheus keeps label names private; comparing them catches a conflicting redefinition.
        same_labels = tuple(existing._labelnames) == tuple(labelnames)  # noqa: SLF001
        if not isinstance(existing, kind) or not same_labels:
            raise TelemetryError(f"metric {name!r} already exists with another type or labels")
        return existing

    # -- exposition ---------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """This registry in the Prometheus text exposition format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
