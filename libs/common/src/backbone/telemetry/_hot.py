"""Counters and histograms for per-message hot paths, rendered by a Prometheus collector.

``prometheus_client`` takes a lock per counter increment and per histogram observation (and
another per bucket), about 1 us per published event once a publish also feeds a latency
histogram. These instruments keep plain numbers and do no locking of their own: the owner
records under the one lock it already holds for its snapshot window (see
:class:`~backbone.telemetry.Metrics`), and the registry's scrape reads them under that same lock
through :meth:`collect`. The exposition is the same as ``prometheus_client``'s ``Counter`` and
``Histogram`` (``<name>_total``; ``_bucket{le}``, ``_sum``, ``_count``), minus ``_created``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator, Sequence

    from prometheus_client.metrics_core import Metric


class HotCounter:
    """A labelled counter; :meth:`inc` must run under ``lock`` (the owner's)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], lock: threading.Lock
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._labelnames = tuple(labelnames)
        self._lock = lock
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``labels`` (values in ``labelnames`` order)."""
        values = self._values
        values[labels] = values.get(labels, 0.0) + amount

    def value(self, labels: tuple[str, ...]) -> float:
        """The current count of one series (0 when never incremented)."""
        with self._lock:
            return self._values.get(labels, 0.0)

    def describe(self) -> Iterator[Metric]:
        """The metric family without samples (for the registry's name checks)."""
        yield CounterMetricFamily(self.name, self.documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        """The family with every series, read under the owner's lock."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self._labelnames)
        with self._lock:
            series = list(self._values.items())
        for labels, value in series:
            family.add_metric(list(labels), value)
        yield family


class _Series:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0


class HotHistogram:
    """A labelled histogram with fixed upper bounds; :meth:`observe` must run under ``lock``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        lock: threading.Lock,
        *,
        buckets: Sequence[float],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._labelnames = tuple(labelnames)
        self._lock = lock
        self._bounds = sorted(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], _Series] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Count one sample in the series of ``labels``."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(len(self._bounds) + 1)
        # le is inclusive: a sample equal to a bound belongs to that bound's bucket.
        series.counts[bisect_left(self._bounds, value)] += 1
        series.sum += value

    def count(self, labels: tuple[str, ...]) -> int:
        """How many samples one series holds."""
        with self._lock:
            series = self._series.get(labels)
            return sum(series.counts) if series is not None else 0

    def describe(self) -> Iterator[Metric]:
        """The metric family without samples (for the registry's name checks)."""
        yield HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        """The family with cumulative buckets per series, read under the owner's lock."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)
        with self._lock:
            series = [(labels, list(s.counts), s.sum) for labels, s in self._series.items()]
        bounds = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for labels, counts, total in series:
            cumulative = 0
            buckets = []
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            family.add_metric(list(labels), buckets, total)
        yield family
