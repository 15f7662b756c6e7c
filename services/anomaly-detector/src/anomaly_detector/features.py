"""Feature extraction: from bus observations to ``(entity, timestamp, {metric: value})`` points.

Three sources, all read over NATS (no HTTP between services):

* ``system.metrics.<service>`` snapshots (shape in ``backbone.telemetry._reporter``): entity
  ``<service>`` (all replicas of a service feed one series, so a restarted pod does not start a
  cold series), metrics = the snapshot's rates, ratios, latencies and gauges; raw window
  counts are skipped when their ``_per_s`` twin is present.
* JetStream stream info (``$JS.API.STREAM.INFO``): entity ``stream:<NAME>`` with
  ``rate_per_s`` (growth of the last sequence), ``messages``, ``bytes``, ``fill_ratio``
  (messages / max_msgs) and ``consumers``.
* JetStream consumer info: entity ``consumer:<STREAM>/<NAME>`` with ``pending``,
  ``ack_pending``, ``redelivered``, ``waiting`` and ``delivered_per_s``.
* Per event type (stream info with a subjects filter): entity ``type:<event type>`` with
  ``rate_per_s`` and ``dead_letter_share`` (its ``dlq.<type>`` growth over its own growth plus
  that). Per-subject counts shrink when old messages are evicted, so these rates are lower
  bounds while a stream is at its limit.

What the detector samples from JetStream is not on the bus by itself, so the poller publishes it
as ``system.metrics.jetstream`` snapshots (:func:`stats_snapshot`; read back by
:func:`stats_observations`): the start-up replay rebuilds those series like the services' ones.

Also the small numeric helpers the service uses per series: :class:`RobustWindow` (median/MAD
of recent values) and :class:`TrendWindow` (Theil-Sen slope, forecasts), and :func:`owner_of`
(which replica owns an entity).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from typing import TYPE_CHECKING, Any, Final

from backbone.messaging import dlq_subject
from backbone.telemetry import METRICS_EVENT_TYPE_PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from backbone.events import CloudEvent

METRICS_PREFIX: Final = METRICS_EVENT_TYPE_PREFIX
STREAM_PREFIX: Final = "stream:"
CONSUMER_PREFIX: Final = "consumer:"
TYPE_PREFIX: Final = "type:"
#: The ``service`` of the detector's JetStream-stats snapshots (reserved: no service has it).
JETSTREAM_SNAPSHOT: Final = "jetstream"
JETSTREAM_METRICS_TYPE: Final = METRICS_PREFIX + JETSTREAM_SNAPSHOT
_KIND_COUNTS: Final = (
    ("stream", "streams"),
    ("consumer", "consumers"),
    ("event_type", "event_types"),
)
_MAD_TO_SIGMA: Final = 1.4826
_MIN_TREND_POINTS: Final = 4


@dataclass(frozen=True, slots=True)
class Observation:
    """One observation of an entity: several metrics at one timestamp.

    Attributes:
        entity: What is observed (``orders``, ``stream:MCP_EVENTS``, ...).
        kind: ``service``, ``stream``, ``consumer`` or ``event_type``.
        timestamp_s: Seconds since the epoch (the event's ``time`` for snapshots).
        values: Metric name -> finite value.
        evidence_stream: The stream holding the evidence (for the alert's link).
        evidence_subject: The subject of the evidence in that stream, when there is one.
        limits: Known limits of some metrics (``{"messages": 100000}``), for predictions.
    """

    entity: str
    kind: str
    timestamp_s: float
    values: dict[str, float]
    evidence_stream: str | None = None
    evidence_subject: str | None = None
    limits: dict[str, float] = field(default_factory=dict)


def owner_of(entity: str, replica_count: int) -> int:
    """The replica index that owns ``entity``: a stable hash (CRC-32) modulo the replica count.

    Stable across processes and Python versions (unlike ``hash``), so every replica agrees.
    """
    if replica_count <= 1:
        return 0
    return zlib.crc32(entity.encode()) % replica_count


def iso(timestamp_s: float) -> str:
    """RFC 3339 UTC timestamp with millisecond precision."""
    return (
        datetime.fromtimestamp(timestamp_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def snapshot_observation(event: CloudEvent) -> Observation | None:
    """The observation carried by a ``system.metrics.<service>`` snapshot (None if malformed).

    None for ``system.metrics.jetstream`` too: that one carries many entities
    (:func:`stats_observations`).
    """
    data = event.data
    if (
        event.type == JETSTREAM_METRICS_TYPE
        or not isinstance(data, dict)
        or not isinstance(data.get("metrics"), dict)
    ):
        return None
    service = data.get("service")
    if not isinstance(service, str) or not service:
        service = event.type.removeprefix(METRICS_PREFIX)
    raw: dict[str, Any] = data["metrics"]
    values: dict[str, float] = {}
    for name, value in raw.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        # A window count says nothing its rate does not, and depends on the window length.
        if f"{name}_per_s" in raw:
            continue
        number = float(value)
        if math.isfinite(number):
            values[str(name)] = number
    if not values:
        return None
    timestamp = event.time.timestamp() if event.time is not None else 0.0
    return Observation(
        entity=service,
        kind="service",
        timestamp_s=timestamp,
        values=values,
        evidence_stream="SYSTEM_EVENTS",
        evidence_subject=event.type,
    )


def stats_snapshot(
    observations: Iterable[Observation], *, instance: str, interval_s: float
) -> dict[str, Any]:
    """The data of a ``system.metrics.jetstream`` snapshot: one poll's observations.

    It follows the metrics-snapshot shape (``service``, ``instance``, ``interval_s``, flat
    numeric ``metrics``: here how many entities of each kind were sampled) and adds
    ``observations``: per entity its ``entity``, ``kind``, ``values``, and when known its
    ``stream``, ``subject`` and ``limits``. The poll time is the event's ``time``.
    """
    entries: list[dict[str, Any]] = []
    kinds: Counter[str] = Counter()
    for obs in observations:
        kinds[obs.kind] += 1
        entry: dict[str, Any] = {"entity": obs.entity, "kind": obs.kind, "values": obs.values}
        if obs.evidence_stream:
            entry["stream"] = obs.evidence_stream
        if obs.evidence_subject:
            entry["subject"] = obs.evidence_subject
        if obs.limits:
            entry["limits"] = obs.limits
        entries.append(entry)
    return {
        "service": JETSTREAM_SNAPSHOT,
        "instance": instance,
        "interval_s": interval_s,
        "metrics": {name: float(kinds[kind]) for kind, name in _KIND_COUNTS},
        "observations": entries,
    }


def _numbers(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def stats_observations(event: CloudEvent) -> list[Observation]:
    """The observations of a ``system.metrics.jetstream`` snapshot (malformed entries skipped)."""
    data = event.data
    if not isinstance(data, dict) or not isinstance(data.get("observations"), list):
        return []
    timestamp = event.time.timestamp() if event.time is not None else 0.0
    observations: list[Observation] = []
    for entry in data["observations"]:
        if not isinstance(entry, dict):
            continue
        entity, kind = entry.get("entity"), entry.get("kind")
        values = _numbers(entry.get("values"))
        if not isinstance(entity, str) or not isinstance(kind, str) or not values:
            continue
        stream, subject = entry.get("stream"), entry.get("subject")
        observations.append(
            Observation(
                entity=entity,
                kind=kind,
                timestamp_s=timestamp,
                values=values,
                evidence_stream=stream if isinstance(stream, str) else None,
                evidence_subject=subject if isinstance(subject, str) else None,
                limits=_numbers(entry.get("limits")),
            )
        )
    return observations


def snapshot_observations(event: CloudEvent) -> list[Observation]:
    """What any ``system.metrics.*`` snapshot carries: one service, or one JetStream poll."""
    if event.type == JETSTREAM_METRICS_TYPE:
        return stats_observations(event)
    obs = snapshot_observation(event)
    return [] if obs is None else [obs]


@dataclass(frozen=True, slots=True)
class StreamStat:
    """What one stream-info call told (plain values, so tests need no server)."""

    name: str
    messages: int
    bytes: int
    last_seq: int
    consumers: int
    max_msgs: int = -1
    max_bytes: int = -1


@dataclass(frozen=True, slots=True)
class ConsumerStat:
    """What one consumer-info call told."""

    stream: str
    name: str
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int
    delivered_seq: int


class StatsTracker:
    """Turns successive JetStream stats into observations (rates from deltas).

    The first poll of a stream or consumer yields levels only; rates need two polls. A counter
    that goes backwards (stream purged or recreated) restarts the rate.
    """

    def __init__(self, *, max_types: int = 200) -> None:
        self.max_types = max_types
        self._last_seq: dict[str, tuple[float, int]] = {}
        self._delivered: dict[str, tuple[float, int]] = {}
        self._type_counts: dict[str, tuple[float, int]] = {}

    @staticmethod
    def _rate(
        memory: dict[str, tuple[float, int]], key: str, now_s: float, count: int
    ) -> float | None:
        previous = memory.get(key)
        memory[key] = (now_s, count)
        if previous is None:
            return None
        then_s, before = previous
        elapsed = now_s - then_s
        if elapsed <= 0 or count < before:
            return None
        return (count - before) / elapsed

    def stream(self, stat: StreamStat, now_s: float) -> Observation:
        """Observation of one stream."""
        values = {
            "messages": float(stat.messages),
            "bytes": float(stat.bytes),
            "consumers": float(stat.consumers),
        }
        limits: dict[str, float] = {}
        if stat.max_msgs > 0:
            values["fill_ratio"] = stat.messages / stat.max_msgs
            limits["messages"] = float(stat.max_msgs)
        rate = self._rate(self._last_seq, stat.name, now_s, stat.last_seq)
        if rate is not None:
            values["rate_per_s"] = rate
        return Observation(
            entity=STREAM_PREFIX + stat.name,
            kind="stream",
            timestamp_s=now_s,
            values=values,
            evidence_stream=stat.name,
            limits=limits,
        )

    def consumer(
        self, stat: ConsumerStat, now_s: float, *, stream_max_msgs: int = -1
    ) -> Observation:
        """Observation of one consumer; its pending count is limited by the stream's size."""
        key = f"{stat.stream}/{stat.name}"
        values = {
            "pending": float(stat.pending),
            "ack_pending": float(stat.ack_pending),
            "redelivered": float(stat.redelivered),
            "waiting": float(stat.waiting),
        }
        rate = self._rate(self._delivered, key, now_s, stat.delivered_seq)
        if rate is not None:
            values["delivered_per_s"] = rate
        # With discard=old a consumer further behind than max_msgs loses messages: that is the
        # limit "pending will exceed the stream limit" is about.
        limits = {"pending": float(stream_max_msgs)} if stream_max_msgs > 0 else {}
        return Observation(
            entity=CONSUMER_PREFIX + key,
            kind="consumer",
            timestamp_s=now_s,
            values=values,
            evidence_stream=stat.stream,
            limits=limits,
        )

    def event_types(
        self,
        stream: str,
        subject_counts: Mapping[str, int],
        dlq_counts: Mapping[str, int],
        now_s: float,
    ) -> list[Observation]:
        """Observations per event type of ``stream`` (subject = type, the one rule)."""
        observations: list[Observation] = []
        for subject, count in sorted(subject_counts.items()):
            if subject not in self._type_counts and len(self._type_counts) >= self.max_types:
                continue
            rate = self._rate(self._type_counts, subject, now_s, count)
            dlq_key = dlq_subject(subject)
            dlq_rate = self._rate(self._type_counts, dlq_key, now_s, dlq_counts.get(dlq_key, 0))
            if rate is None:
                continue
            values = {"rate_per_s": rate}
            if dlq_rate is not None:
                total = rate + dlq_rate
                values["dead_letter_share"] = dlq_rate / total if total > 0 else 0.0
            observations.append(
                Observation(
                    entity=TYPE_PREFIX + subject,
                    kind="event_type",
                    timestamp_s=now_s,
                    values=values,
                    evidence_stream=stream,
                    evidence_subject=subject,
                )
            )
        return observations


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class RobustWindow:
    """The last ``size`` values of a series, with a robust z-score of a new value against them.

    The scale is ``max(1.4826 * MAD, min_relative * |median|, tiny)``: on a flat series a change
    must still be a visible fraction of the level to count.
    """

    def __init__(self, size: int, *, min_relative: float = 0.05) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self.min_relative = min_relative

    def __len__(self) -> int:
        return len(self._values)

    def stats(self) -> tuple[float, float]:
        """``(median, scale)`` of the window; ``(nan, nan)`` when empty."""
        if not self._values:
            return math.nan, math.nan
        values = list(self._values)
        med = _median(values)
        mad = _median([abs(v - med) for v in values])
        scale = max(_MAD_TO_SIGMA * mad, self.min_relative * abs(med), 1e-9)
        return med, scale

    def zscore(self, value: float) -> float:
        """Signed robust z-score of ``value`` against the window (0 when empty)."""
        med, scale = self.stats()
        if math.isnan(med):
            return 0.0
        return (value - med) / scale

    def add(self, value: float) -> None:
        """Learn ``value``."""
        self._values.append(value)


@dataclass(frozen=True, slots=True)
class Trend:
    """A robust linear trend: ``value(t) = level + slope_per_s * (t - at_s)``.

    Attributes:
        at_s: The newest timestamp of the window.
        level: The fitted value at ``at_s``.
        slope_per_s: Theil-Sen slope (median of pairwise slopes).
        agreement: Fraction of pairwise slopes with the same sign as the slope (0.5 = noise).
    """

    at_s: float
    level: float
    slope_per_s: float
    agreement: float

    def forecast(self, at_s: float) -> float:
        """The value the trend reaches at ``at_s``."""
        return self.level + self.slope_per_s * (at_s - self.at_s)

    def time_to_reach(self, limit: float) -> float | None:
        """Seconds from ``at_s`` until the trend reaches ``limit`` (None if it never does)."""
        if self.level >= limit:
            return 0.0
        if self.slope_per_s <= 0:
            return None
        return (limit - self.level) / self.slope_per_s


class TrendWindow:
    """A sliding window of ``(t, value)`` with a Theil-Sen fit (robust to a few outliers)."""

    def __init__(self, size: int) -> None:
        self._points: deque[tuple[float, float]] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._points)

    def add(self, timestamp_s: float, value: float) -> None:
        """Learn one point."""
        self._points.append((timestamp_s, value))

    def fit(self) -> Trend | None:
        """The trend of the window, or None with too few points or no time spread."""
        points = list(self._points)
        if len(points) < _MIN_TREND_POINTS:
            return None
        slopes = [
            (v2 - v1) / (t2 - t1) for (t1, v1), (t2, v2) in combinations(points, 2) if t2 > t1
        ]
        if not slopes:
            return None
        slope = _median(slopes)
        newest = points[-1][0]
        # Theil-Sen intercept: median of the residual levels, read at the newest point.
        level = _median([v + slope * (newest - t) for t, v in points])
        same = sum(1 for s in slopes if (s > 0) == (slope > 0) and s != 0)
        return Trend(newest, level, slope, same / len(slopes))


def watched_metrics(values: Iterable[str], *, limit: int) -> list[str]:
    """The first ``limit`` metric names, sorted (bounds the series per entity)."""
    return sorted(values)[:limit]
