"""Periodic metrics snapshots published on the bus as ``system.metrics.<service>`` CloudEvents.

Every ``interval_s`` the reporter closes the :class:`~backbone.telemetry.Metrics` window,
evaluates its gauge callbacks and publishes one CloudEvent:

- ``type``: ``system.metrics.<service>`` (so the subject is the same, captured by SYSTEM_EVENTS)
- ``source``: ``/backbone/<service>``
- ``subject``: the instance id (``<hostname>-<pid>``)
- ``data`` (the snapshot; flat and stable, the anomaly detector and its JSON Schema rely on it)::

    {
      "service": "event-gateway",          # str, the service name
      "instance": "host-1234",             # str, which replica
      "interval_s": 5.0,                   # float, measured length of the window
      "metrics": {                         # dict[str, float], every value finite
        "events_published": 120.0,         # count in the window (acknowledged, incl. duplicates)
        "events_published_per_s": 24.0,
        "publish_errors": 0.0,             # publishes not acknowledged, count in the window
        "publish_errors_per_s": 0.0,
        "publish_duplicates_per_s": 0.0,   # publishes JetStream dropped as duplicates
        "publish_latency_p50_ms": 0.41,    # publish -> PubAck, 0.0 when nothing was published
        "publish_latency_p90_ms": 0.9,
        "publish_latency_p99_ms": 3.2,
        "events_consumed": 118.0,          # handler runs (success or failure) in the window
        "events_consumed_per_s": 23.6,
        "handler_errors": 1.0,             # handler runs that raised
        "handler_errors_per_s": 0.2,
        "handler_error_ratio": 0.0085,     # handler_errors / events_consumed, 0.0 when idle
        "dead_lettered": 0.0,
        "dead_lettered_per_s": 0.0,
        "handler_latency_p50_ms": 1.1,     # 0.0 when no handler ran
        "handler_latency_p90_ms": 2.3,
        "handler_latency_p99_ms": 7.9,
        "handler_latency_max_ms": 12.5,
        "consumer_pending": 42.0           # gauges: one key per gauge callback / set_gauge name
      }
    }

The built-in keys above are always present (percentiles are within ~1 % of the exact value);
gauge keys are present when their callback succeeded. New keys may be added over time, existing
ones keep their name and meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Self, TypeAlias

from backbone.events import CloudEvent
from backbone.telemetry._errors import TelemetryError
from backbone.telemetry._metrics import SNAPSHOT_METRIC_NAMES
from backbone.telemetry._setup import default_instance_id

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from backbone.telemetry._metrics import Metrics

GaugeCallback: TypeAlias = Callable[[], Awaitable[float] | float]
"""A gauge reader: returns the current level, synchronously or as an awaitable."""

METRICS_EVENT_TYPE_PREFIX: Final = "system.metrics."
_SERVICE_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_GAUGE_RE: Final = re.compile(r"^[a-z_][a-z0-9_]*$")

_log = logging.getLogger(__name__)


def metrics_event_type(service: str) -> str:
    """The CloudEvent type (and subject) of ``service``'s metrics snapshots."""
    return METRICS_EVENT_TYPE_PREFIX + service


class MetricsReporter:
    """Publishes a metrics snapshot of one service every ``interval_s`` (see the module docs).

    Publishing failures and failing gauge callbacks are logged and never stop the loop; a
    publish that takes longer than the interval is abandoned so reports keep their pace.

    Args:
        metrics: The service's metrics.
        service: The service name; becomes part of the event type, so ``[A-Za-z0-9_-]+``.
        publish: Publishes one CloudEvent (usually ``Publisher.publish``).
        interval_s: Time between snapshots (``settings.telemetry.metrics_interval_s``).
        instance: The replica's id; default ``<hostname>-<pid>``.
        gauges: Named callbacks (sync or async) returning a level such as ``consumer_pending``;
            each value is also set on the Prometheus gauge ``backbone_<name>``.
        gauge_timeout_s: How long one gauge callback may take before it is skipped.
        clock: Monotonic clock used to pace the loop.
        sleep: Awaitable sleep used by the loop (tests pass a fast one).
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        service: str,
        publish: Callable[[CloudEvent], Awaitable[Any]],
        interval_s: float = 5.0,
        instance: str | None = None,
        gauges: Mapping[str, GaugeCallback] | None = None,
        gauge_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not _SERVICE_RE.match(service):
            raise TelemetryError(f"service name {service!r} must match [A-Za-z0-9_-]+")
        if interval_s <= 0:
            raise TelemetryError(f"interval_s must be positive, got {interval_s}")
        self.metrics = metrics
        self.service = service
        self.instance = instance or default_instance_id()
        self.interval_s = interval_s
        self._publish = publish
        self._gauges: dict[str, GaugeCallback] = {}
        for name, callback in (gauges or {}).items():
            self.add_gauge(name, callback)
        self._gauge_timeout_s = gauge_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.reports_published = 0
        self.reports_failed = 0

    @property
    def event_type(self) -> str:
        """``system.metrics.<service>``."""
        return metrics_event_type(self.service)

    @property
    def running(self) -> bool:
        """Whether the reporting loop is running."""
        return self._task is not None and not self._task.done()

    def add_gauge(self, name: str, callback: GaugeCallback) -> None:
        """Register (or replace) a gauge callback evaluated at every report.

        Raises:
            TelemetryError: When the name is invalid or shadows a built-in snapshot metric.
        """
        if not _GAUGE_RE.match(name) or name in SNAPSHOT_METRIC_NAMES:
            raise TelemetryError(
                f"gauge name {name!r} must match [a-z_][a-z0-9_]* and not be a built-in metric"
            )
        self._gauges[name] = callback

    async def collect(self) -> dict[str, Any]:
        """Evaluate the gauges, close the metrics window and return the snapshot dict."""
        results = await asyncio.gather(*(self._read_gauge(n, cb) for n, cb in self._gauges.items()))
        for name, value in zip(self._gauges, results, strict=True):
            if value is None:
                self.metrics.clear_gauge(name)  # no stale level in the snapshot
            else:
                self.metrics.set_gauge(name, value)
        window = self.metrics.take_window()
        return {
            "service": self.service,
            "instance": self.instance,
            "interval_s": window.elapsed_s,
            "metrics": {
                name: value for name, value in window.to_metrics().items() if math.isfinite(value)
            },
        }

    async def _read_gauge(self, name: str, callback: GaugeCallback) -> float | None:
        try:
            async with asyncio.timeout(self._gauge_timeout_s):
                result = callback()
                if inspect.isawaitable(result):
                    result = await result
            value = float(result)
        except Exception:  # noqa: BLE001 - a broken gauge must not stop the report
            _log.warning(
                "gauge callback failed; skipped in this report",
                exc_info=True,
                extra={"gauge": name, "service": self.service},
            )
            return None
        if not math.isfinite(value):
            _log.warning("gauge %s returned %r; skipped in this report", name, value)
            return None
        return value

    def build_event(self, snapshot: Mapping[str, Any]) -> CloudEvent:
        """The CloudEvent carrying ``snapshot``."""
        return CloudEvent.create(
            type=self.event_type,
            source=f"/backbone/{self.service}",
            subject=self.instance,
            data=dict(snapshot),
        )

    async def report_once(self) -> dict[str, Any]:
        """Collect one snapshot and publish it; failures are logged, never raised.

        Returns:
            The snapshot that was (or failed to be) published.
        """
        snapshot = await self.collect()
        try:
            event = self.build_event(snapshot)
            async with asyncio.timeout(self.interval_s):
                await self._publish(event)
        except Exception:  # noqa: BLE001 - publish failures are logged, the loop keeps going
            self.reports_failed += 1
            _log.warning(
                "metrics snapshot not published",
                exc_info=True,
                extra={"service": self.service, "event_type": self.event_type},
            )
        else:
            self.reports_published += 1
        return snapshot

    async def _run(self) -> None:
        next_at = self._clock() + self.interval_s
        while not self._stopping:
            await self._sleep(max(next_at - self._clock(), 0.0))
            try:
                await self.report_once()
            except Exception:  # noqa: BLE001 - a bug in one report must not end reporting
                _log.exception("metrics report failed", extra={"service": self.service})
            next_at += self.interval_s
            now = self._clock()
            if next_at < now:  # fell behind (long pause): skip missed slots, keep the pace
                next_at = now + self.interval_s

    def start(self) -> None:
        """Start the reporting loop as a task of the running event loop (no-op if running)."""
        if self.running:
            return
        # The first window starts now, not when the metrics were created.
        self.metrics.take_window()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"metrics-reporter-{self.service}")

    async def stop(self) -> None:
        """Stop the loop; a report being published is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        # A library awaiting inside the publish can swallow a cancellation (nats-py's wait_for
        # on Python 3.11 when the PubAck lands at the same moment): the flag ends the loop at
        # its next turn, and the task is cancelled again until it is done.
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
