"""throttle_producer: suggested for rising ingress rates, applied through ``set_rate``."""

import random
from pathlib import Path

import pytest

from anomaly_detector.actions import ActionGate, Throttle, suggest
from anomaly_detector.features import Observation
from anomaly_detector.handlers import FindingSink
from anomaly_detector.service import DetectorService
from anomaly_detector.settings import ActionSettings, AnomalySection
from backbone.resilience import RateLimiter, RateLimiterConfig, ResilienceRegistry
from backbone.service import ServiceRuntime
from backbone.settings import BackboneSettings

ROOT = Path(__file__).resolve().parents[3]
T0 = 1_750_000_000.0
GATEWAY_LIMITER = "event-gateway-global"  # the name event_gateway.app registers


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stream_obs(i: int, rate: float, *, stream: str = "CLAUDE_EVENTS") -> Observation:
    return Observation(
        f"stream:{stream}", "stream", T0 + 5 * i, {"rate_per_s": rate}, evidence_stream=stream
    )


def detector(**actions) -> DetectorService:
    return DetectorService(
        AnomalySection(warmup_points=60, multivariate=False, actions=ActionSettings(**actions))
    )


def surge_findings(svc: DetectorService, *, stream: str = "CLAUDE_EVENTS", surge: float = 400.0):
    rng = random.Random(5)
    for i in range(200):
        assert (
            svc.observe(stream_obs(i, 100.0 * (1 + rng.uniform(-0.05, 0.05)), stream=stream)) == []
        )
    findings = []
    for i in range(200, 206):
        findings += svc.observe(stream_obs(i, surge, stream=stream))
    return [f for f in findings if f.type == "ai.anomaly.detected"]


def test_a_rate_surge_on_an_ingress_stream_suggests_an_executable_throttle():
    (alert,) = surge_findings(detector())
    (throttle,) = alert.suggestions
    assert throttle.action == "throttle_producer"
    assert throttle.target == f"event-gateway/{GATEWAY_LIMITER}"
    assert (throttle.service, throttle.name) == ("event-gateway", GATEWAY_LIMITER)
    assert throttle.rate_per_s == pytest.approx(200.0)  # half the observed 400/s
    assert throttle.executable
    assert throttle.op == "set_rate"


def test_a_stream_without_a_known_producer_or_a_rate_drop_is_not_throttled():
    (alert,) = surge_findings(detector(), stream="AUDIT")
    assert [(s.action, s.target, s.executable) for s in alert.suggestions] == [
        ("throttle_producer", "stream:AUDIT", False)
    ]
    (drop,) = surge_findings(detector(), surge=10.0)
    assert drop.suggestions == ()  # a producer that slowed down is no reason to throttle it
    (floor,) = surge_findings(detector(throttle_fraction=0.001, throttle_min_rate_per_s=5.0))
    assert floor.suggestions[0].rate_per_s == 5.0


def test_pending_heading_for_the_stream_limit_throttles_at_the_ingress_rate():
    svc = detector(throttle_fraction=0.5)
    findings = []
    for i in range(30):
        findings += svc.observe(
            Observation(
                "consumer:MCP_EVENTS/w",
                "consumer",
                T0 + i,
                {"pending": 100.0 * i, "delivered_per_s": 20.0},
                evidence_stream="MCP_EVENTS",
                limits={"pending": 3500.0},
            )
        )
    (prediction,) = [f for f in findings if f.type == "ai.prediction.stream_limit"]
    throttle = next(s for s in prediction.suggestions if s.action == "throttle_producer")
    # Producers write what the consumer delivers plus the backlog's growth: 20 + 100 per second.
    assert throttle.rate_per_s == pytest.approx(60.0)
    assert throttle.executable


def test_throttle_suggestion_without_target_stays_advice():
    plain = suggest(
        finding="prediction.stream_limit",
        entity="stream:S",
        kind="stream",
        metric="messages",
        confidence=0.9,
    )
    assert [(s.action, s.executable) for s in plain] == [
        ("scale_consumer", False),
        ("throttle_producer", False),
    ]
    aimed = suggest(
        finding="anomaly",
        entity="type:mcp.tool.called",
        kind="event_type",
        metric="rate_per_s",
        confidence=0.9,
        throttle=Throttle("event-gateway", GATEWAY_LIMITER, 12.5, 25.0),
    )
    assert [(s.target, s.rate_per_s, s.executable) for s in aimed] == [
        ("event-gateway/event-gateway-global", 12.5, True)
    ]


def test_producers_setting_needs_service_slash_limiter():
    with pytest.raises(ValueError, match="service>/<rate limiter"):
        ActionSettings(producers={"S": "no-slash"})


async def test_detector_throttles_the_gateway_limiter_then_restores_it(nats_server, nats_client):
    registry = ResilienceRegistry()
    limiter = RateLimiter(GATEWAY_LIMITER, RateLimiterConfig(rate_per_s=1000.0, max_wait_s=0))
    registry.register(limiter)
    gateway = ServiceRuntime(
        "event-gateway",
        BackboneSettings(
            nats={"servers": [nats_server.url]},
            streams_file=ROOT / "deploy" / "streams.yaml",
            telemetry={"publish_metrics": False},
        ),
        ops_server=False,
        resilience=registry,
    )
    clock = Clock()
    actions = ActionSettings(
        enabled=True,
        allowlist=["throttle_producer:event-gateway/*"],
        expire_after_s=60.0,
        control_timeout_s=0.5,
    )
    published = []

    async def publish(event):
        published.append(event)

    svc = detector(**actions.model_dump())
    sink = FindingSink(
        publish=publish, nc=nats_client, gate=ActionGate(actions, clock=clock), settings=actions
    )
    async with gateway:
        (alert,) = surge_findings(svc)
        await sink.publish([alert])
        (suggested,) = [e for e in published if e.type == "ai.action.suggested"]
        assert suggested.data["auto"] == "applied"
        assert suggested.data["limiter"] == GATEWAY_LIMITER
        (applied,) = [e for e in published if e.type == "ai.action.applied"]
        assert applied.data["action"] == "throttle_producer"
        assert applied.data["result"] == "ok"
        assert applied.data["op"] == "set_rate"
        assert applied.data["subject"] == "backbone.control.event-gateway.resilience"
        assert applied.data["replies"][0]["instances"] == [GATEWAY_LIMITER]
        assert applied.data["rate_per_s"] == pytest.approx(200.0)
        assert limiter.rate_per_s == pytest.approx(200.0)
        assert limiter.burst == pytest.approx(200.0)

        clock.now += 59.0
        assert await sink.expire_due() == []
        assert limiter.rate_per_s == pytest.approx(200.0)
        clock.now += 1.0
        (expired,) = await sink.expire_due()
        assert expired.id == applied.id
        restore = [e for e in published if e.type == "ai.action.applied"][-1]
        assert restore.data["action"] == "restore_producer"
        assert restore.data["op"] == "restore_rate"
        assert restore.data["reverts"] == applied.id
        assert restore.data["result"] == "ok"
        assert (limiter.rate_per_s, limiter.burst) == (1000.0, 1000.0)
