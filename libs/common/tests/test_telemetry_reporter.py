from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backbone.events import CloudEvent, to_json
from backbone.telemetry import Metrics, MetricsReporter, TelemetryError, metrics_event_type
from backbone.telemetry._metrics import SNAPSHOT_METRIC_NAMES


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _deadline(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_report_publishes_a_flat_snapshot_as_a_system_metrics_cloudevent():
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    published: list[CloudEvent] = []

    async def publish(event: CloudEvent) -> None:
        published.append(event)

    async def pending() -> int:
        return 17

    reporter = MetricsReporter(
        metrics,
        service="event-gateway",
        publish=publish,
        interval_s=5.0,
        instance="host-1",
        gauges={"consumer_pending": pending, "outbox_backlog": lambda: 3},
        clock=clock,
    )
    for _ in range(20):
        metrics.record_published(stream="MCP_EVENTS", event_type="mcp.x", latency_s=0.0005)
    metrics.record_handled(stream="MCP_EVENTS", event_type="mcp.x", latency_s=0.004)
    clock.now += 5.0
    snapshot = await reporter.report_once()

    (event,) = published
    assert event.type == "system.metrics.event-gateway" == metrics_event_type("event-gateway")
    assert event.source == "/backbone/event-gateway"
    assert event.subject == "host-1"
    assert event.data == snapshot
    assert json.loads(to_json(event))["data"] == snapshot  # JSON-serialisable as published
    assert set(snapshot) == {"service", "instance", "interval_s", "metrics"}
    assert snapshot["service"] == "event-gateway"
    assert snapshot["instance"] == "host-1"
    assert snapshot["interval_s"] == 5.0
    values = snapshot["metrics"]
    assert set(values) == {*SNAPSHOT_METRIC_NAMES, "consumer_pending", "outbox_backlog"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    assert values["events_published_per_s"] == pytest.approx(4.0)
    assert values["publish_latency_p50_ms"] == pytest.approx(0.5)
    assert values["handler_latency_p99_ms"] == pytest.approx(4.0)
    assert values["consumer_pending"] == 17.0
    assert values["outbox_backlog"] == 3.0
    assert reporter.reports_published == 1
    # Gauge values are also visible on /metrics.
    body, _ = metrics.render()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["backbone_consumer_pending"].samples[0].value == 17


async def test_failing_slow_and_non_finite_gauges_are_skipped(caplog):
    async def broken() -> float:
        raise RuntimeError("consumer_info failed")

    async def hanging() -> float:
        await asyncio.sleep(10)
        return 1.0

    async def publish(event: CloudEvent) -> None:
        pass

    reporter = MetricsReporter(
        Metrics(),
        service="svc",
        publish=publish,
        gauges={"broken": broken, "hanging": hanging, "nan": lambda: math.nan, "ok": lambda: 1},
        gauge_timeout_s=0.05,
    )
    reporter.metrics.set_gauge("broken", 5)  # a level from an earlier, successful read
    with caplog.at_level(logging.WARNING):
        snapshot = await reporter.report_once()
    assert snapshot["metrics"]["ok"] == 1.0
    assert not {"broken", "hanging", "nan"} & set(snapshot["metrics"])
    assert "gauge callback failed" in caplog.text


async def test_publish_failures_are_logged_and_the_loop_keeps_reporting(caplog):
    attempts: list[CloudEvent] = []

    async def flaky(event: CloudEvent) -> None:
        attempts.append(event)
        if len(attempts) <= 2:
            raise ConnectionError("nats down")

    reporter = MetricsReporter(Metrics(), service="svc", publish=flaky, interval_s=0.01)
    with caplog.at_level(logging.WARNING):
        async with reporter:
            assert reporter.running
            await _deadline(lambda: reporter.reports_published >= 2)
    assert not reporter.running
    assert reporter.reports_failed == 2
    assert "metrics snapshot not published" in caplog.text
    assert "ConnectionError: nats down" in caplog.text


async def test_a_hung_publish_is_abandoned_after_one_interval():
    calls = 0

    async def hangs_once(event: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(30)

    reporter = MetricsReporter(Metrics(), service="svc", publish=hangs_once, interval_s=0.05)
    reporter.start()
    try:
        await _deadline(lambda: reporter.reports_published >= 1)
    finally:
        await reporter.stop()
    assert reporter.reports_failed == 1


async def test_the_loop_keeps_its_pace_by_the_injected_clock():
    clock = FakeClock()
    sleeps: list[float] = []

    async def fake_sleep(delay_s: float) -> None:
        sleeps.append(delay_s)
        clock.now += delay_s
        await asyncio.sleep(0)

    snapshots: list[dict] = []

    async def publish(event: CloudEvent) -> None:
        snapshots.append(event.data)
        clock.now += 0.25  # publishing takes time; the next sleep is shorter

    reporter = MetricsReporter(
        Metrics(clock=clock),
        service="svc",
        publish=publish,
        interval_s=2.0,
        clock=clock,
        sleep=fake_sleep,
    )
    reporter.start()
    try:
        await _deadline(lambda: len(snapshots) >= 3)
    finally:
        await reporter.stop()
    assert sleeps[:3] == [2.0, 1.75, 1.75]
    assert [s["interval_s"] for s in snapshots[:3]] == [2.0, 2.0, 2.0]


async def test_stop_is_idempotent_and_start_twice_is_one_loop():
    async def publish(event: CloudEvent) -> None:
        pass

    reporter = MetricsReporter(Metrics(), service="svc", publish=publish, interval_s=60)
    await reporter.stop()
    reporter.start()
    task = reporter._task
    reporter.start()
    assert reporter._task is task
    await reporter.stop()
    await reporter.stop()
    assert task is not None
    assert task.cancelled()


def test_invalid_names_are_refused():
    async def publish(event: CloudEvent) -> None:
        pass

    with pytest.raises(TelemetryError):
        MetricsReporter(Metrics(), service="a.b", publish=publish)
    with pytest.raises(TelemetryError):
        MetricsReporter(Metrics(), service="svc", publish=publish, interval_s=0)
    reporter = MetricsReporter(Metrics(), service="svc", publish=publish)
    with pytest.raises(TelemetryError):
        reporter.add_gauge("handler_latency_p99_ms", lambda: 1)
    with pytest.raises(TelemetryError):
        reporter.add_gauge("Bad Name", lambda: 1)
