"""The seasonal significance path: a daily surge that does not come reaches operators.

Simulated days on an injected clock (event time), with a busy block from 09:00 to 18:00 UTC
whose start and end wander by a few minutes from day to day, as real traffic does.
"""

import asyncio
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from anomaly_detector.app import create_app
from anomaly_detector.detection import SeasonalResidual
from anomaly_detector.features import Observation, iso
from anomaly_detector.service import DetectorService
from anomaly_detector.settings import AnomalySection, Settings
from backbone.events import CloudEvent, decode_nats
from backbone.messaging import Publisher, apply_streams, load_catalog

MIDNIGHT = 1_750_032_000.0  # 2025-06-16T00:00:00Z
DAY_S = 86_400.0
HOUR_S = 3_600.0
SURGE_START_S = 9 * HOUR_S
SURGE_END_S = 18 * HOUR_S
JITTER_S = 240.0  # the surge starts and ends up to 4 minutes early or late


def daily_surges(rng, *, days, cadence_s, missing_day=None, spike_at_s=None):
    """``(timestamp, value)``: 20 at night, 80 in the busy block, ±5 % noise."""
    points = []
    for day in range(days):
        start = SURGE_START_S + rng.uniform(-JITTER_S, JITTER_S)
        end = SURGE_END_S + rng.uniform(-JITTER_S, JITTER_S)
        for k in range(int(DAY_S / cadence_s)):
            tod = k * cadence_s
            busy = start <= tod < end and day != missing_day
            value = (80.0 if busy else 20.0) * (1 + rng.uniform(-0.05, 0.05))
            t = MIDNIGHT + day * DAY_S + tod
            if spike_at_s is not None and spike_at_s <= t < spike_at_s + 3 * cadence_s:
                value *= 3.0
            points.append((t, value))
    return points


def anomalies(findings):
    return [f for f in findings if f.type == "ai.anomaly.detected"]


def test_missing_surge_alerts_once_on_the_seasonal_basis_and_steady_days_stay_quiet():
    rng = random.Random(8)
    spike_s = MIDNIGHT + 3 * DAY_S + 3 * HOUR_S
    points = daily_surges(rng, days=4, cadence_s=10.0, missing_day=3, spike_at_s=spike_s)
    svc = DetectorService(AnomalySection(multivariate=False))
    by_day: dict[int, list] = {0: [], 1: [], 2: [], 3: []}
    for t, value in points:
        obs = Observation("orders", "service", t, {"rate_per_s": value}, "SYSTEM_EVENTS")
        by_day[int((t - MIDNIGHT) // DAY_S)] += anomalies(svc.observe(obs))
    state = svc.series("orders", "rate_per_s")
    assert state is not None
    assert state.detector.seasonal
    # Day 0 is the first surge ever seen: a level shift as far as anyone could know.
    assert by_day[0]
    assert {f.data["basis"] for f in by_day[0]} == {"recent"}
    # Then the season explains the surge: far from the last 20 minutes, not from yesterday.
    assert by_day[1] == []
    assert by_day[2] == []
    assert state.explained > 0
    # Day 3: the night spike still alerts on the recent basis, the missing surge on the season.
    spike, missing = by_day[3]
    assert spike.data["basis"] == "recent"
    assert spike.timestamp_s == spike_s
    data = missing.data
    assert data["basis"] == "seasonal"
    assert data["detector"] == "seasonal"
    assert data["metric"] == "rate_per_s"
    expected_start = MIDNIGHT + 3 * DAY_S + SURGE_START_S
    assert expected_start < missing.timestamp_s <= expected_start + 20 * 60
    seasonal = data["seasonal"]
    assert seasonal["period_s"] == DAY_S
    assert seasonal["expected"] == pytest.approx(80.0, rel=0.05)
    assert seasonal["observed"] == pytest.approx(20.0, rel=0.05)
    assert seasonal["deviation"] < -50.0
    assert len(seasonal["previous"]) == 3
    assert seasonal["z"] <= -4.0
    assert iso(expected_start - 600) <= seasonal["since"] <= iso(expected_start + 600)
    assert data["expected"] == pytest.approx(seasonal["expected"])
    assert data["confidence"] > 0.8
    assert "below its usual level for this time of day" in data["summary"]
    assert "previous 3 days" in data["summary"]
    hint = data["root_cause_hints"][0]
    assert (hint["feature"], hint["basis"]) == ("rate_per_s", "seasonal")
    assert hint["deviation"] == seasonal["deviation"]
    previous = data["evidence"]["previous_periods"]
    assert [p["start_time"] for p in previous] == [
        iso(datetime.fromisoformat(seasonal["window_start"]).timestamp() - k * DAY_S)
        for k in (1, 2, 3)
    ]
    # A rate that dropped suggests no throttle.
    assert all(s.action != "throttle_producer" for s in missing.suggestions)


def test_a_surge_a_few_minutes_late_is_the_usual_surge_not_a_missing_one():
    rng = random.Random(9)
    points = daily_surges(rng, days=3, cadence_s=60.0)
    late_s = MIDNIGHT + 2 * DAY_S + SURGE_START_S
    svc = DetectorService(AnomalySection(multivariate=False))
    found = []
    for t, value in points:
        late = late_s <= t < late_s + 8 * 60  # 8 minutes late today
        metrics = {"rate_per_s": 20.0 if late else value}
        found += anomalies(svc.observe(Observation("orders", "service", t, metrics)))
    assert [f for f in found if f.timestamp_s >= MIDNIGHT + DAY_S] == []


def test_seasonal_baseline_reads_the_same_time_of_past_days_with_a_tolerance():
    season = SeasonalResidual(
        period_s=DAY_S, periods=3, span_points=1, max_points=4096, bin_s=300.0
    )
    rng = np.random.default_rng(3)
    for i in range(3 * 8640 + 9 * 360 + 61):  # three days, then up to 09:10 on the fourth
        t = MIDNIGHT + i * 10.0
        tod = (t - MIDNIGHT) % DAY_S
        busy = SURGE_START_S <= tod < SURGE_END_S and i < 3 * 8640
        season.update(t, (80.0 if busy else 20.0) + float(rng.normal(0, 0.5)))
    assert season.slot_s == 300.0
    span = season.last_span()  # the 09:05 bin, closed by the first point of 09:10
    assert span is not None
    assert span.start_s == MIDNIGHT + 3 * DAY_S + SURGE_START_S + 300
    assert span.observed == pytest.approx(20.0, abs=0.5)
    assert span.expected == pytest.approx(80.0, abs=0.5)
    assert len(span.past) == 3
    assert span.nearest == pytest.approx(80.0, abs=0.5)
    assert 0 < span.spread < 1.0  # day-over-day spread of 5-minute means
    # Allowing two bins of shift, 08:55 (a quiet bin) is within reach: no departure.
    assert season.last_span(tolerance=2).nearest == pytest.approx(20.0, abs=0.5)
    latest = season.at_latest(79.0)  # the open 09:10 bin against past 09:10 bins
    assert latest is not None
    assert latest.expected == pytest.approx(80.0, abs=0.5)
    assert latest.start_s == MIDNIGHT + 3 * DAY_S + SURGE_START_S + 600


# -- live: the same story through NATS, the first day rebuilt by the start-up replay ---------

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"


def snapshot(t: float, value: float) -> CloudEvent:
    return CloudEvent.create(
        type="system.metrics.orders",
        source="/backbone/orders",
        time=datetime.fromtimestamp(t, UTC),
        data={"service": "orders", "interval_s": 60.0, "metrics": {"events_consumed_per_s": value}},
    )


async def until(predicate, *, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_live_missing_surge_judged_by_a_replayed_day(nats_server, nats_client):
    catalog = load_catalog(STREAMS)
    await apply_streams(nats_client.jetstream(), catalog)
    publisher = Publisher(nats_client, catalog=catalog)
    alerts: list[CloudEvent] = []

    async def on_alert(msg) -> None:
        alerts.append(decode_nats(msg.headers or {}, msg.data))

    await nats_client.subscribe("ai.anomaly.detected", cb=on_alert)
    rng = random.Random(10)
    points = daily_surges(rng, days=2, cadence_s=60.0, missing_day=1)
    history, live = points[: 1440 + 6 * 60], points[1440 + 6 * 60 : 1440 + 10 * 60]
    # An ordinary day (and the next night) written before the detector started: a replay
    # window that covers them rebuilds the season, emitting nothing, so the live morning is
    # judged by it. (Every replayed snapshot also passes the new durable, acknowledged
    # unlearned: that, not the detector, is where this test spends its time.)
    await publisher.publish_many([snapshot(t, v) for t, v in history])
    app = create_app(
        Settings(
            nats={"servers": [nats_server.url]},
            http={"port": 0},
            streams_file=STREAMS,
            telemetry={"publish_metrics": False},
            anomaly={"stats_interval_s": 0, "replay_window_s": 600, "multivariate": False},
        ),
        install_signal_handlers=False,
    )
    task = asyncio.create_task(app.run())
    try:
        await until(app.ready.is_set, what="detector ready")
        assert app.replayed == len(history)
        state = app.service.series("orders", "events_consumed_per_s")
        assert state is not None
        assert state.detector.seasonal
        # 06:00 to 10:00 of the second day, live: no surge at 09:00.
        await publisher.publish_many([snapshot(t, v) for t, v in live])
        await until(
            lambda: app.service.observations >= len(history) + len(live), what="the live morning"
        )
        await until(lambda: bool(alerts), what="ai.anomaly.detected for the missing surge")
        await nats_client.flush()
        assert len(alerts) == 1
        alert = alerts[0]
        assert alert.subject == "orders"
        assert alert.data["basis"] == "seasonal"
        assert alert.data["metric"] == "events_consumed_per_s"
        expected_start = MIDNIGHT + DAY_S + SURGE_START_S
        assert alert.time is not None
        assert expected_start < alert.time.timestamp() <= expected_start + 30 * 60
        seasonal = alert.data["seasonal"]
        assert seasonal["observed"] < 25.0
        assert seasonal["expected"] > 60.0
        assert len(seasonal["previous"]) == 1
        assert "previous 1 day " in alert.data["summary"]
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 20)
