"""Settings of the anomaly detector: ``BACKBONE_*`` plus the ``BACKBONE_ANOMALY__*`` section.

Examples::

    BACKBONE_HTTP__PORT=8083                              # /livez /readyz /metrics (default 8083)
    BACKBONE_ANOMALY__REPLICA_INDEX=1                     # this replica's share of the series
    BACKBONE_ANOMALY__REPLICA_COUNT=3
    BACKBONE_ANOMALY__REPLAY_WINDOW_S=1800                # rebuild models from the last 30 min
    BACKBONE_ANOMALY__STATS_INTERVAL_S=5                  # JetStream stream/consumer polling
    BACKBONE_ANOMALY__ACTIONS__ENABLED=true               # automatic actions (off by default)
    BACKBONE_ANOMALY__ACTIONS__ALLOWLIST='["open_breaker:orders", "throttle_producer:*"]'
    BACKBONE_ANOMALY__ACTIONS__THROTTLE_FRACTION=0.5      # throttle to half the observed rate
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from backbone.settings import BackboneSettings, HttpSettings

SERVICE_NAME = "anomaly-detector"
DEFAULT_HTTP_PORT = 8083
#: The streams the event gateway writes to, and the limiter in front of all of its ingress
#: (``event_gateway.app`` registers it under remote control as ``event-gateway-global``).
INGRESS_STREAMS = ("CLAUDE_EVENTS", "MCP_EVENTS", "WEBHOOK_EVENTS")
INGRESS_LIMITER = "event-gateway/event-gateway-global"


def _split_list(value: Any) -> Any:  # noqa: ANN401 - raw settings input
    # Operators write "a,b" in env files; accept that as well as JSON.
    if isinstance(value, str):
        import json  # noqa: PLC0415 - only for this rare path

        if value.lstrip().startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ActionSettings(BaseModel):
    """Automatic actions (``BACKBONE_ANOMALY__ACTIONS__*``).

    Suggestions (``ai.action.suggested``) are always published. An action is *applied*
    (``backbone.control.<service>.resilience`` request + ``ai.action.applied``) only when
    ``enabled`` is true, an ``allowlist`` entry matches ``<action>:<target>`` (shell-style
    globs, e.g. ``open_breaker:orders``, ``open_breaker:orders/*``, ``open_breaker:*``), the
    target had no action in the last ``min_interval_s``, fewer than ``max_per_hour`` actions
    were applied in the last hour, and the action is executable (``open_breaker``, and
    ``throttle_producer`` for streams listed in ``producers``). Every applied action is
    reverted after ``expire_after_s`` (``close`` / ``restore_rate``).

    A throttle sets the rate limiter named in ``producers`` for the stream concerned to
    ``throttle_fraction`` of the observed rate (events per second, never below
    ``throttle_min_rate_per_s``). Each replica of that service gets this rate, and the event
    gateway's limiters count requests (a batch is one), so the throttle is at most as tight as
    asked.
    """

    enabled: bool = False
    allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    expire_after_s: float = Field(default=120.0, gt=0)
    min_interval_s: float = Field(default=300.0, ge=0)
    max_per_hour: int = Field(default=6, ge=0)
    breakers: dict[str, str] = Field(
        default_factory=dict,
        description="service -> breaker name to open; unset opens every breaker of the service",
    )
    control_timeout_s: float = Field(default=1.0, gt=0)
    producers: dict[str, str] = Field(
        default_factory=lambda: dict.fromkeys(INGRESS_STREAMS, INGRESS_LIMITER),
        description="stream -> '<service>/<rate limiter>' admitting its producers",
    )
    throttle_fraction: float = Field(default=0.5, gt=0, le=1)
    throttle_min_rate_per_s: float = Field(default=1.0, gt=0)

    _split = field_validator("allowlist", mode="before")(_split_list)

    @field_validator("producers")
    @classmethod
    def _service_slash_limiter(cls, value: dict[str, str]) -> dict[str, str]:
        for stream, target in value.items():
            service, _, limiter = target.partition("/")
            if not service or not limiter or any(c in service for c in " .*>"):
                msg = f"producers[{stream!r}] must be '<service>/<rate limiter>', not {target!r}"
                raise ValueError(msg)
        return value


class AnomalySection(BaseModel):
    """Knobs of the detector service (``BACKBONE_ANOMALY__*``).

    Attributes:
        replica_index: This replica's position (0-based), e.g. a StatefulSet ordinal.
        replica_count: How many replicas split the series (by a stable hash of the entity).
        durable: Durable consumer name prefix on SYSTEM_EVENTS; the replica index is appended
            when ``replica_count`` > 1 (each replica reads every snapshot, keeps its share).
        replay_window_s: How much recent history rebuilds the models on start.
        replay_max_messages: Upper bound on replayed messages (bounds start-up time).
        stats_interval_s: Period of the JetStream stream/consumer stats poll (0 disables it).
        stats_snapshots: Publish each poll's observations as a ``system.metrics.jetstream``
            snapshot, so a restart replays those series warm.
        type_rate_streams: Streams whose per-subject (per event type) rates are tracked.
        max_types: At most this many event types are tracked per poll.
        warmup_points: Points a series learns before it may alert.
        max_series: Series kept in memory (least recently updated dropped beyond).
        robust_window: Recent values behind the robust median/MAD of each series.
        min_z: Robust z-score a value must reach for an alert (significance gate).
        min_relative_change: Smallest deviation counted, as a fraction of the median (keeps flat
            series from alerting on tiny wiggles).
        sustained_z: Robust z-score that alerts by itself once held ``sustained_points`` points.
        sustained_points: Consecutive points above ``sustained_z`` for the sustained path.
        seasonal_tolerance_s: How far "the same time of day" may shift when a value is
            judged against the previous days: a surge this much early or late is the usual
            surge (no alert), and a missing surge is called once this much past its start.
        alert_cooldown_s: Event time after an alert (or prediction) during which the same series
            stays quiet: one incident, one alert.
        incident_memory_s: Event time after an alert during which the series coming back to
            its level before the alert is the incident's recovery, not a new alert, even once
            the recent window has absorbed the incident's level.
        series_cut_floor: Lowest adaptive cut on the series score (operator "missed" feedback
            may lower it towards ``series_cut_min``).
        series_cut_min: Lowest value feedback can lower the cut to.
        evidence_window_s: Length of the evidence window linked from an alert.
        horizon_s: How far ahead predictions look.
        trend_points: Points of the sliding window of the robust linear trend.
        error_ratio_threshold: Error ratio that a prediction warns about.
        latency_threshold_factor: Latency threshold as a multiple of the series' median.
        latency_threshold_min_ms: Latency threshold never below this.
        multivariate: Fit an IsolationForest per entity for root-cause hints.
        feedback_replay_s: How far back operator feedback is replayed on start.
    """

    replica_index: int = Field(default=0, ge=0)
    replica_count: int = Field(default=1, ge=1)
    durable: str = Field(default="anomaly-detector", pattern=r"^[A-Za-z0-9_-]+$")
    replay_window_s: float = Field(default=1800.0, ge=0)
    replay_max_messages: int = Field(default=200_000, ge=0)
    stats_interval_s: float = Field(default=5.0, ge=0)
    stats_snapshots: bool = True
    type_rate_streams: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CLAUDE_EVENTS", "MCP_EVENTS", "WEBHOOK_EVENTS"]
    )
    max_types: int = Field(default=200, ge=0)
    warmup_points: int = Field(default=120, ge=1)
    max_series: int = Field(default=5000, ge=1)
    robust_window: int = Field(default=120, ge=8)
    min_z: float = Field(default=4.0, gt=0)
    min_relative_change: float = Field(default=0.05, ge=0)
    sustained_z: float = Field(default=6.0, gt=0)
    sustained_points: int = Field(default=3, ge=1)
    seasonal_tolerance_s: float = Field(default=600.0, ge=0)
    alert_cooldown_s: float = Field(default=300.0, ge=0)
    incident_memory_s: float = Field(default=21_600.0, ge=0)
    series_cut_floor: float = Field(default=0.35, ge=0, le=1)
    series_cut_min: float = Field(default=0.05, ge=0, le=1)
    evidence_window_s: float = Field(default=600.0, gt=0)
    horizon_s: float = Field(default=60.0, gt=0)
    trend_points: int = Field(default=24, ge=4)
    error_ratio_threshold: float = Field(default=0.05, gt=0)
    latency_threshold_factor: float = Field(default=3.0, gt=1)
    latency_threshold_min_ms: float = Field(default=50.0, ge=0)
    multivariate: bool = True
    feedback_replay_s: float = Field(default=7 * 86400.0, ge=0)
    actions: ActionSettings = Field(default_factory=ActionSettings)

    _split = field_validator("type_rate_streams", mode="before")(_split_list)

    @model_validator(mode="after")
    def _index_in_range(self) -> Self:
        if self.replica_index >= self.replica_count:
            msg = "replica_index must be smaller than replica_count"
            raise ValueError(msg)
        return self

    @property
    def durable_name(self) -> str:
        """The durable consumer of this replica."""
        if self.replica_count == 1:
            return self.durable
        return f"{self.durable}-{self.replica_index}"


class Settings(BackboneSettings):
    """Settings of the ``anomaly-detector`` process."""

    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=DEFAULT_HTTP_PORT))
    anomaly: AnomalySection = Field(default_factory=AnomalySection)
