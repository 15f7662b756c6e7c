"""The detector service against a real nats-server: compressed timelines fed fast."""

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jsonschema
import pytest
from nats.js import api

from anomaly_detector.actions import ActionGate
from anomaly_detector.app import create_app
from anomaly_detector.handlers import FindingSink, StatsPoller
from anomaly_detector.service import DetectorService
from anomaly_detector.settings import ActionSettings, AnomalySection, Settings
from backbone.events import CloudEvent, decode_nats
from backbone.messaging import Publisher, apply_streams, load_catalog
from backbone.resilience import CircuitState, ResilienceControl, ResilienceRegistry

ROOT = Path(__file__).resolve().parents[3]
STREAMS = ROOT / "deploy" / "streams.yaml"
SCHEMAS = ROOT / "deploy" / "schemas"
T0 = 1_750_000_000.0


async def until(predicate, *, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def snapshot(i: int, *, service: str = "orders", latency_p99_ms: float = 8.0, seed: int = 0):
    """One metrics snapshot, 1 s apart on a compressed timeline, with ±5 % jitter."""
    rng = random.Random(seed * 1_000_003 + i)

    def jitter(x: float) -> float:
        return x * (1 + rng.uniform(-0.05, 0.05))

    return CloudEvent.create(
        type=f"system.metrics.{service}",
        source=f"/backbone/{service}",
        subject="host-1",
        time=datetime.fromtimestamp(T0 + i, UTC),
        data={
            "service": service,
            "instance": "host-1",
            "interval_s": 1.0,
            "metrics": {
                "events_consumed": 100.0,
                "events_consumed_per_s": jitter(100.0),
                "handler_error_ratio": 0.0,
                "handler_latency_p50_ms": jitter(2.0),
                "handler_latency_p99_ms": jitter(latency_p99_ms),
                "publish_latency_p99_ms": jitter(3.0),
                "consumer_pending": jitter(10.0),
            },
        },
    )


def settings(nats_url: str, **anomaly) -> Settings:
    return Settings(
        nats={"servers": [nats_url]},
        http={"port": 0},
        streams_file=STREAMS,
        telemetry={"publish_metrics": False},
        anomaly={"stats_interval_s": 0, **anomaly},
    )


class Collector:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def on_msg(self, msg) -> None:
        self.events.append(decode_nats(msg.headers or {}, msg.data))

    def of(self, event_type: str) -> list[CloudEvent]:
        return [e for e in self.events if e.type == event_type]


@pytest.fixture
async def bus(nats_client):
    await apply_streams(nats_client.jetstream(), load_catalog(STREAMS))
    collector = Collector()
    await nats_client.subscribe("ai.>", cb=collector.on_msg)
    return Publisher(nats_client, catalog=load_catalog(STREAMS)), collector


async def started(app):
    task = asyncio.create_task(app.run())

    async def ready():
        if task.done():
            raise task.exception()
        return app.ready.is_set()

    await until(ready, what="detector ready")
    return task


async def stop(app, task):
    app.request_stop()
    await asyncio.wait_for(task, 20)


async def processed(app, count: int) -> None:
    async def done():
        return app.service.observations >= count

    await until(done, what=f"{count} snapshots processed")


def valid(event: CloudEvent, schema_file: str) -> None:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    jsonschema.validate(event.data, schema)


async def test_quiet_ten_minute_baseline_then_latency_degradation_alerts_naming_service_and_metric(
    nats_server, nats_client, bus
):
    publisher, ai = bus
    app = create_app(settings(nats_server.url, replay_window_s=0), install_signal_handlers=False)
    task = await started(app)
    try:
        # 10 minutes of 1 s snapshots, fed as fast as the bus takes them.
        await publisher.publish_many([snapshot(i) for i in range(600)])
        await processed(app, 600)
        await nats_client.flush()
        assert ai.of("ai.anomaly.detected") == []
        began = time.monotonic()
        await publisher.publish_many([snapshot(i, latency_p99_ms=40.0) for i in range(600, 610)])

        async def alerted():
            return any(
                e.data["service"] == "orders" and e.data["metric"] == "handler_latency_p99_ms"
                for e in ai.of("ai.anomaly.detected")
            )

        await until(alerted, timeout_s=15, what="ai.anomaly.detected for orders latency")
        assert time.monotonic() - began < 15
        alert = ai.of("ai.anomaly.detected")[0]
        data = alert.data
        assert alert.subject == "orders"
        assert data["confidence"] > 0.9
        assert data["root_cause_hints"][0]["feature"] == "handler_latency_p99_ms"
        assert data["evidence"]["link"].startswith("backbone://streams/SYSTEM_EVENTS?start_time=")
        assert data["evidence"]["subject"] == "system.metrics.orders"
        assert data["observed_at"] == datetime.fromtimestamp(T0 + 600, UTC).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
        valid(alert, "ai.anomaly.detected.json")

        async def suggested():
            return any(e.data["action"] == "open_breaker" for e in ai.of("ai.action.suggested"))

        await until(suggested, what="open_breaker suggestion")
        suggestion = next(
            e for e in ai.of("ai.action.suggested") if e.data["action"] == "open_breaker"
        )
        assert suggestion.data["auto"] == "disabled"
        assert suggestion.data["trigger"]["id"] == alert.id
        valid(suggestion, "ai.action.suggested.json")
        assert ai.of("ai.action.applied") == []

        # Operator feedback through AI_EVENTS reaches the series' threshold.
        state = app.service.series("orders", "handler_latency_p99_ms")
        cut_before = state.threshold.value
        await publisher.publish(
            CloudEvent.create(
                type="ai.feedback.false_positive",
                source="/test",
                data={"alert_id": alert.id, "entity": "orders", "metric": "handler_latency_p99_ms"},
            )
        )

        async def applied():
            return app.feedback.applied == 1

        await until(applied, what="feedback applied")
        assert state.sensitivity > 1.0
        assert state.threshold.value > cut_before
    finally:
        await stop(app, task)


@pytest.mark.parametrize("enabled", [True, False])
async def test_automatic_action_goes_through_the_control_subject_only_when_enabled(
    nats_server, nats_client, bus, enabled
):
    publisher, ai = bus
    registry = ResilienceRegistry()
    breaker = registry.circuit_breaker("downstream")
    control = ResilienceControl(registry, nats_client, service="orders")
    await control.start()
    app = create_app(
        settings(
            nats_server.url,
            replay_window_s=0,
            warmup_points=40,
            multivariate=False,
            actions={
                "enabled": enabled,
                "allowlist": ["open_breaker:orders/*"],
                "breakers": {"orders": "downstream"},
                "expire_after_s": 1.0,
            },
        ),
        install_signal_handlers=False,
    )
    task = await started(app)
    try:
        await publisher.publish_many([snapshot(i, seed=1) for i in range(60)])
        await publisher.publish_many(
            [snapshot(i, latency_p99_ms=80.0, seed=1) for i in range(60, 64)]
        )

        async def suggested():
            return any(e.data["action"] == "open_breaker" for e in ai.of("ai.action.suggested"))

        await until(suggested, what="open_breaker suggestion")
        suggestion = next(
            e for e in ai.of("ai.action.suggested") if e.data["action"] == "open_breaker"
        )
        assert suggestion.data["target"] == "orders/downstream"
        if not enabled:
            assert suggestion.data["auto"] == "disabled"
            await nats_client.flush()
            assert ai.of("ai.action.applied") == []
            assert breaker.state is CircuitState.CLOSED
            return
        assert suggestion.data["auto"] == "applied"

        async def opened():
            return bool(ai.of("ai.action.applied"))

        await until(opened, what="ai.action.applied")
        applied = ai.of("ai.action.applied")[0]
        assert applied.data["action"] == "open_breaker"
        assert applied.data["result"] == "ok"
        assert applied.data["subject"] == "backbone.control.orders.resilience"
        assert applied.data["replies"][0]["instances"] == ["downstream"]
        assert applied.data["expires_at"]
        valid(applied, "ai.action.applied.json")
        assert breaker.state is CircuitState.FORCED_OPEN

        async def reverted():
            return len(ai.of("ai.action.applied")) == 2

        await until(reverted, what="expiry recorded")
        revert = ai.of("ai.action.applied")[1]
        assert revert.data["action"] == "close_breaker"
        assert revert.data["reverts"] == applied.id
        assert breaker.state is CircuitState.CLOSED
    finally:
        await stop(app, task)
        await control.stop()


async def test_restart_rebuilds_models_from_recent_snapshots(nats_server, nats_client, bus):
    publisher, ai = bus
    # History written while no detector ran: the replay must warm the models from it.
    await publisher.publish_many([snapshot(i, seed=2) for i in range(150)])
    app = create_app(settings(nats_server.url, replay_window_s=600), install_signal_handlers=False)
    task = await started(app)
    try:
        assert app.replayed == 150
        state = app.service.series("orders", "handler_latency_p99_ms")
        assert state is not None
        assert state.points == 150
        assert ai.events == []  # replay learns, it does not re-alert
        await publisher.publish_many(
            [snapshot(i, latency_p99_ms=40.0, seed=2) for i in range(150, 154)]
        )

        async def alerted():
            return bool(ai.of("ai.anomaly.detected"))

        await until(alerted, what="alert right after restart")
        await processed(app, 154)
        await asyncio.sleep(0.2)  # a double delivery would show up here
        assert app.service.observations == 154  # replayed + new, none learned twice
    finally:
        await stop(app, task)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_process_serves_readyz_and_exits_zero_on_sigterm(nats_server, nats_client, tmp_path):
    await apply_streams(nats_client.jetstream(), load_catalog(STREAMS))
    port = _free_port()
    env = {
        **os.environ,
        "BACKBONE_NATS__SERVERS": nats_server.url,
        "BACKBONE_HTTP__PORT": str(port),
        "BACKBONE_STREAMS_FILE": str(STREAMS),
        "BACKBONE_TELEMETRY__METRICS_INTERVAL_S": "0.5",
        "BACKBONE_ANOMALY__STATS_INTERVAL_S": "0.5",
    }
    snapshots = await nats_client.subscribe("system.metrics.anomaly-detector")
    log = tmp_path / "detector.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anomaly_detector"], env=env, stdout=sink, stderr=sink
        )
    try:
        async with httpx.AsyncClient() as http:

            async def ready():
                assert proc.poll() is None, log.read_text()
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(ready, timeout_s=30, what="/readyz 200")
            assert (await http.get(f"http://127.0.0.1:{port}/livez")).status_code == 200
            msg = await snapshots.next_msg(timeout=10)
            assert decode_nats(msg.headers, msg.data).data["service"] == "anomaly-detector"

            async def stats_polled():
                body = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                return "backbone_anomaly_series_tracked" in body

            await until(stats_polled, what="gauges on /metrics")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_stats_poller_reads_stream_consumer_and_event_type_levels(nats_client, bus):
    publisher, _ = bus
    js = nats_client.jetstream()
    await js.add_consumer(
        "MCP_EVENTS", api.ConsumerConfig(durable_name="worker", ack_policy=api.AckPolicy.EXPLICIT)
    )
    now = [1000.0]
    service = DetectorService(AnomalySection())
    sink = FindingSink(
        publish=publisher.publish,
        nc=nats_client,
        gate=ActionGate(ActionSettings()),
        settings=ActionSettings(),
    )
    poller = StatsPoller(
        js,
        service,
        sink,
        owns=lambda e: not e.startswith("stream:AI"),
        type_rate_streams=["MCP_EVENTS"],
        clock=lambda: now[0],
    )
    seen = []
    for _ in range(3):
        await publisher.publish_many(
            [CloudEvent.create(type="mcp.tool.called", source="/t", data={}) for _ in range(20)]
        )
        seen = await poller.observations()
        now[0] += 2.0
    by_entity = {o.entity: o for o in seen}
    assert "stream:AI_EVENTS" not in by_entity  # another replica's
    assert by_entity["stream:MCP_EVENTS"].values["rate_per_s"] == pytest.approx(10.0)
    assert by_entity["stream:MCP_EVENTS"].limits == {"messages": 50000.0}
    worker = by_entity["consumer:MCP_EVENTS/worker"]
    assert worker.values["pending"] == 60.0
    assert worker.limits == {"pending": 50000.0}
    assert by_entity["type:mcp.tool.called"].values["rate_per_s"] == pytest.approx(10.0)
    assert await poller.poll_once() > 0
