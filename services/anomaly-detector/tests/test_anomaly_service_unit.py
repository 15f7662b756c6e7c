"""Feature extraction, service logic and action policy, without a broker (injected clocks)."""

import random
from datetime import UTC, datetime

import pytest

from anomaly_detector.actions import ActionGate, suggest
from anomaly_detector.features import (
    ConsumerStat,
    Observation,
    RobustWindow,
    StatsTracker,
    StreamStat,
    TrendWindow,
    owner_of,
    snapshot_observation,
)
from anomaly_detector.handlers import FeedbackFollower
from anomaly_detector.service import DetectorService
from anomaly_detector.settings import ActionSettings, AnomalySection, Settings
from backbone.errors import ConfigError
from backbone.events import CloudEvent
from backbone.settings import load_settings


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def obs(i, values, *, entity="orders", kind="service", limits=None):
    return Observation(
        entity, kind, 1_750_000_000.0 + i, values, "SYSTEM_EVENTS", None, limits or {}
    )


def jitter(rng, x):
    return x * (1 + rng.uniform(-0.05, 0.05))


# -- features ---------------------------------------------------------------------------------


def test_snapshot_observation_keeps_rates_latencies_and_gauges_not_window_counts():
    event = CloudEvent.create(
        type="system.metrics.orders",
        source="/backbone/orders",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        data={
            "service": "orders",
            "metrics": {
                "events_consumed": 50,
                "events_consumed_per_s": 10.0,
                "handler_latency_p99_ms": 7.5,
                "consumer_pending": 3,
                "flag": True,
            },
        },
    )
    o = snapshot_observation(event)
    assert o is not None
    assert o.entity == "orders"
    assert o.values == {
        "events_consumed_per_s": 10.0,
        "handler_latency_p99_ms": 7.5,
        "consumer_pending": 3.0,
    }
    assert o.timestamp_s == datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    assert o.evidence_subject == "system.metrics.orders"
    bad = CloudEvent.create(type="system.metrics.x", source="/x", data={"metrics": "nope"})
    assert snapshot_observation(bad) is None


def test_stats_tracker_turns_sequence_deltas_into_rates_and_restarts_on_reset():
    tracker = StatsTracker()
    first = tracker.stream(StreamStat("MCP_EVENTS", 10, 100, 10, 1, max_msgs=100), 0.0)
    assert "rate_per_s" not in first.values
    assert first.values["fill_ratio"] == pytest.approx(0.1)
    assert first.limits == {"messages": 100.0}
    second = tracker.stream(StreamStat("MCP_EVENTS", 30, 300, 30, 1, max_msgs=100), 4.0)
    assert second.values["rate_per_s"] == pytest.approx(5.0)
    assert second.entity == "stream:MCP_EVENTS"
    purged = tracker.stream(StreamStat("MCP_EVENTS", 0, 0, 2, 1, max_msgs=100), 5.0)
    assert "rate_per_s" not in purged.values
    c = tracker.consumer(ConsumerStat("MCP_EVENTS", "w", 7, 2, 1, 0, 5), 0.0, stream_max_msgs=100)
    assert c.entity == "consumer:MCP_EVENTS/w"
    assert c.values["pending"] == 7.0
    assert c.limits == {"pending": 100.0}


def test_event_type_rates_and_dead_letter_share():
    tracker = StatsTracker(max_types=1)
    assert tracker.event_types("MCP_EVENTS", {"mcp.a": 10, "mcp.b": 5}, {}, 0.0) == []
    out = tracker.event_types("MCP_EVENTS", {"mcp.a": 30, "mcp.b": 9}, {"dlq.mcp.a": 5}, 2.0)
    assert [o.entity for o in out] == ["type:mcp.a"]  # max_types bounds the cardinality
    assert out[0].values["rate_per_s"] == pytest.approx(10.0)
    assert out[0].values["dead_letter_share"] == pytest.approx(2.5 / 12.5)


def test_owner_is_stable_and_spreads_entities():
    owners = [owner_of(f"svc-{i}", 3) for i in range(300)]
    assert owners == [owner_of(f"svc-{i}", 3) for i in range(300)]
    assert {owners.count(k) for k in range(3)} <= set(range(70, 131))
    assert owner_of("anything", 1) == 0


def test_robust_window_scale_has_a_relative_floor():
    window = RobustWindow(16, min_relative=0.05)
    for _ in range(16):
        window.add(100.0)
    assert window.zscore(104.0) == pytest.approx(0.8)  # flat series: 4 % is not 'infinite'
    assert window.zscore(140.0) == pytest.approx(8.0)


def test_theil_sen_trend_ignores_an_outlier_and_forecasts():
    trend = TrendWindow(20)
    for t in range(20):
        trend.add(float(t), 2.0 * t + (500.0 if t == 10 else 0.0))
    fit = trend.fit()
    assert fit is not None
    assert fit.slope_per_s == pytest.approx(2.0)
    assert fit.forecast(29.0) == pytest.approx(58.0)
    assert fit.time_to_reach(48.0) == pytest.approx(5.0)
    assert fit.agreement > 0.9


# -- service ----------------------------------------------------------------------------------


def service(**knobs) -> DetectorService:
    return DetectorService(AnomalySection(warmup_points=60, multivariate=False, **knobs))


def test_steady_series_is_quiet_and_a_level_shift_alerts_once_naming_the_metric():
    rng = random.Random(3)
    svc = service()
    for i in range(300):
        assert (
            svc.observe(obs(i, {"lat_ms": jitter(rng, 8.0), "rate_per_s": jitter(rng, 50)})) == []
        )
    shifted = [
        svc.observe(obs(i, {"lat_ms": 30.0, "rate_per_s": jitter(rng, 50)}))
        for i in range(300, 330)
    ]
    alerts = [f for fs in shifted for f in fs if f.type == "ai.anomaly.detected"]
    assert len(alerts) == 1  # cool-down: one incident, one alert
    data = alerts[0].data
    assert data["metric"] == "lat_ms"
    assert [m["metric"] for m in data["metrics"]] == ["lat_ms"]
    assert data["root_cause_hints"][0]["feature"] == "lat_ms"
    assert svc.alert(alerts[0].id)[:2] == ("orders", "lat_ms")


def test_replay_learns_without_emitting_and_starts_the_cooldown():
    svc = service()
    for i in range(100):
        svc.observe(obs(i, {"x": 10.0 + (i % 3) * 0.1}), emit=False)
    assert svc.observe(obs(100, {"x": 50.0}), emit=False) == []
    # The same incident seen again live (after a restart) is inside its cool-down.
    assert svc.observe(obs(101, {"x": 50.0})) == []


def test_pending_trend_towards_the_stream_limit_is_predicted_within_the_horizon():
    svc = service()
    findings = []
    for i in range(30):
        findings += svc.observe(
            obs(
                i,
                {"pending": 100.0 * i},
                entity="consumer:MCP_EVENTS/w",
                kind="consumer",
                limits={"pending": 3500.0},
            )
        )
    predictions = [f for f in findings if f.type.startswith("ai.prediction.")]
    assert [p.type for p in predictions] == ["ai.prediction.stream_limit"]
    data = predictions[0].data
    assert data["eta_s"] <= 60.0
    assert data["limit"] == 3500.0
    assert data["horizon_s"] == 60.0
    assert {s.action for s in predictions[0].suggestions} == {"scale_consumer", "throttle_producer"}


def test_error_ratio_trend_is_predicted_to_cross_its_threshold():
    svc = service(error_ratio_threshold=0.05)
    types = []
    for i in range(30):
        types += [f.type for f in svc.observe(obs(i, {"handler_error_ratio": 0.002 * i}))]
    assert "ai.prediction.error_rate" in types


def test_false_positive_feedback_raises_the_cut_and_the_gate_missed_lowers_them():
    svc = service()
    for i in range(80):
        svc.observe(obs(i, {"x": 10.0}))
    state = svc.series("orders", "x")
    cut = state.threshold.value
    assert svc.apply_feedback("false_positive", entity="orders", metric="x", score=0.6)
    assert state.threshold.value > max(cut, 0.6)
    assert state.sensitivity == pytest.approx(1.25)
    cut_after_fp = state.threshold.value
    assert svc.apply_feedback("missed", entity="orders", metric="x", score=0.2)
    assert state.threshold.value < cut_after_fp
    assert state.sensitivity == pytest.approx(1.25 * 0.8)
    # On a series without false positives, "missed" takes the cut below its default floor.
    svc.observe(obs(0, {"fresh": 1.0}))
    assert svc.apply_feedback("missed", entity="orders", metric="fresh", score=0.2)
    assert svc.series("orders", "fresh").threshold.value < 0.35


def test_feedback_for_an_unseen_series_waits_for_it_and_unknown_alert_ids_are_refused():
    svc = service()
    assert svc.apply_feedback("false_positive", entity="later", metric="y")
    assert not svc.apply_feedback("missed", alert_id="nope")
    svc.observe(obs(0, {"y": 1.0}, entity="later"))
    assert svc.series("later", "y").sensitivity == pytest.approx(1.25)


def test_feedback_follower_applies_only_owned_entities():
    svc = service()
    follower = FeedbackFollower(None, svc, owns=lambda e: e == "mine", since=datetime.now(UTC))
    event = CloudEvent.create(
        type="ai.feedback.false_positive", source="/t", data={"entity": "theirs", "metric": "m"}
    )
    assert not follower.handle(event)
    mine = CloudEvent.create(
        type="ai.feedback.missed", source="/t", data={"entity": "mine", "metric": "m", "score": 0.5}
    )
    assert follower.handle(mine)
    bogus = CloudEvent.create(type="ai.feedback.maybe", source="/t", data={"entity": "mine"})
    assert not follower.handle(bogus)


# -- actions ----------------------------------------------------------------------------------


def test_suggestions_follow_the_finding():
    lat = suggest(
        finding="anomaly",
        entity="orders",
        kind="service",
        metric="handler_latency_p99_ms",
        confidence=0.9,
        breakers={"orders": "db"},
    )
    assert [(s.action, s.target, s.executable) for s in lat] == [
        ("open_breaker", "orders/db", True),
        ("enable_cache", "orders", False),
    ]
    assert lat[0].op == "force_open"
    err = suggest(
        finding="prediction.error_rate",
        entity="orders",
        kind="service",
        metric="handler_error_ratio",
        confidence=0.8,
    )
    assert [(s.action, s.target) for s in err] == [("open_breaker", "orders")]
    backlog = suggest(
        finding="anomaly", entity="consumer:S/w", kind="consumer", metric="pending", confidence=0.5
    )
    assert [s.action for s in backlog] == ["scale_consumer"]
    rate = suggest(
        finding="anomaly", entity="stream:S", kind="stream", metric="rate_per_s", confidence=0.5
    )
    assert [s.action for s in rate] == ["throttle_producer"]


def breaker_suggestion(target="orders"):
    return suggest(
        finding="anomaly", entity=target, kind="service", metric="latency_ms", confidence=1.0
    )[0]


def test_gate_needs_enabled_allowlisted_and_executable():
    clock = Clock()
    assert (
        ActionGate(ActionSettings(), clock=clock).decide(breaker_suggestion()).reason == "disabled"
    )
    gate = ActionGate(ActionSettings(enabled=True, allowlist=["open_breaker:pay*"]), clock=clock)
    assert gate.decide(breaker_suggestion()).reason == "not_allowlisted"
    assert gate.decide(breaker_suggestion("payments")).apply
    cache = suggest(
        finding="anomaly", entity="payments", kind="service", metric="latency_ms", confidence=1.0
    )[1]
    assert gate.decide(cache).reason == "not_executable"


def test_gate_rate_limits_and_expires_with_the_injected_clock():
    clock = Clock()
    settings = ActionSettings(
        enabled=True, allowlist=["*"], min_interval_s=300, max_per_hour=2, expire_after_s=60
    )
    gate = ActionGate(settings, clock=clock)
    first = breaker_suggestion("a")
    decision = gate.decide(first)
    assert decision.apply
    assert decision.expires_at_s == 1060.0
    gate.record("act-1", first)
    assert gate.decide(first).reason == "already_in_force"
    clock.now += 59
    assert gate.due() == []
    clock.now += 1
    assert [a.id for a in gate.due()] == ["act-1"]
    assert gate.decide(first).reason == "rate_limited_target"  # 60 s < min_interval_s
    gate.record("act-2", breaker_suggestion("b"))
    assert gate.decide(breaker_suggestion("c")).reason == "rate_limited_global"
    clock.now += 3600
    assert gate.decide(breaker_suggestion("c")).apply


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("BACKBONE_ANOMALY__ACTIONS__ENABLED", "true")
    monkeypatch.setenv(
        "BACKBONE_ANOMALY__ACTIONS__ALLOWLIST", "open_breaker:orders,open_breaker:x/*"
    )
    monkeypatch.setenv("BACKBONE_ANOMALY__REPLICA_INDEX", "1")
    monkeypatch.setenv("BACKBONE_ANOMALY__REPLICA_COUNT", "2")
    s = load_settings(Settings)
    assert s.http.port == 8083
    assert s.anomaly.actions.enabled
    assert s.anomaly.actions.allowlist == ["open_breaker:orders", "open_breaker:x/*"]
    assert s.anomaly.durable_name == "anomaly-detector-1"
    monkeypatch.setenv("BACKBONE_ANOMALY__REPLICA_INDEX", "2")
    with pytest.raises(ConfigError):
        load_settings(Settings)
