"""JetStream-stat series survive a restart: polled stats are published and replayed."""

import asyncio
import random
import time
from pathlib import Path

from nats.js import api

from anomaly_detector.actions import ActionGate
from anomaly_detector.app import create_app
from anomaly_detector.features import (
    JETSTREAM_METRICS_TYPE,
    Observation,
    snapshot_observation,
    snapshot_observations,
    stats_snapshot,
)
from anomaly_detector.handlers import FindingSink, StatsPoller
from anomaly_detector.service import DetectorService
from anomaly_detector.settings import ActionSettings, AnomalySection, Settings
from backbone.events import CloudEvent
from backbone.messaging import Publisher, apply_streams, load_catalog

ROOT = Path(__file__).resolve().parents[3]
STREAMS = ROOT / "deploy" / "streams.yaml"
KNOBS = {"warmup_points": 30, "multivariate": False}
POLLS = 45


def test_stats_snapshot_round_trips_its_observations():
    observations = [
        Observation("stream:S", "stream", 0.0, {"messages": 5.0}, "S", None, {"messages": 9.0}),
        Observation("consumer:S/w", "consumer", 0.0, {"pending": 2.0}, "S"),
        Observation("type:a.b", "event_type", 0.0, {"rate_per_s": 0.5}, "S", "a.b"),
    ]
    data = stats_snapshot(observations, instance="det-1", interval_s=5.0)
    assert data["service"] == "jetstream"
    assert data["metrics"] == {"streams": 1.0, "consumers": 1.0, "event_types": 1.0}
    data["observations"].append({"entity": "broken"})  # skipped, not fatal
    event = CloudEvent.create(type=JETSTREAM_METRICS_TYPE, source="/t", time=None, data=data)
    event = event.model_copy(update={"time": None})
    back = snapshot_observations(event)
    assert back == observations
    assert snapshot_observation(event) is None  # never mistaken for a service called jetstream


async def test_restarted_detector_replays_jetstream_series_warm_and_scores_alike(
    nats_server, nats_client
):
    js = nats_client.jetstream()
    catalog = load_catalog(STREAMS)
    await apply_streams(js, catalog)
    publisher = Publisher(nats_client, catalog=catalog)
    await js.add_consumer(
        "MCP_EVENTS", api.ConsumerConfig(durable_name="worker", ack_policy=api.AckPolicy.EXPLICIT)
    )
    # The detector that never stops: it polls, learns and publishes its snapshots.
    never_stopped = DetectorService(AnomalySection(**KNOBS))
    actions = ActionSettings()
    sink = FindingSink(
        publish=publisher.publish, nc=None, gate=ActionGate(actions), settings=actions
    )
    now = [float(int(time.time()) - 10 * POLLS)]
    poller = StatsPoller(
        js,
        never_stopped,
        sink,
        owns=lambda _: True,
        type_rate_streams=["MCP_EVENTS"],
        clock=lambda: now[0],
        publish=publisher.publish,
        instance="det-1",
    )
    rng = random.Random(11)
    for _ in range(POLLS):
        await publisher.publish_many(
            [
                CloudEvent.create(type="mcp.tool.called", source="/t", data={})
                for _ in range(rng.randint(3, 6))
            ]
        )
        await poller.poll_once()
        now[0] += 5.0
    assert poller.snapshots == POLLS

    app = create_app(
        Settings(
            nats={"servers": [nats_server.url]},
            http={"port": 0},
            streams_file=STREAMS,
            telemetry={"publish_metrics": False},
            anomaly={"stats_interval_s": 0, "replay_window_s": 3600, **KNOBS},
        ),
        install_signal_handlers=False,
    )
    task = asyncio.create_task(app.run())
    try:
        deadline = time.monotonic() + 20
        while not app.ready.is_set():
            assert not task.done(), task
            assert time.monotonic() < deadline, "detector not ready"
            await asyncio.sleep(0.05)
        assert app.replayed == POLLS
        restarted = app.service
        keys = [
            ("stream:MCP_EVENTS", "messages"),
            ("stream:MCP_EVENTS", "rate_per_s"),
            ("consumer:MCP_EVENTS/worker", "pending"),
            ("consumer:MCP_EVENTS/worker", "ack_pending"),
            ("type:mcp.tool.called", "rate_per_s"),
        ]
        for entity, metric in keys:
            before = never_stopped.series(entity, metric)
            after = restarted.series(entity, metric)
            assert before is not None
            assert after is not None, (entity, metric)
            assert after.points == before.points >= KNOBS["warmup_points"]  # warm-up done
            assert after.window.stats() == before.window.stats()
            assert after.threshold.value == before.threshold.value
            assert after.trend.fit() == before.trend.fit()
            # The next point gets the very same verdict from both.
            t, value = now[0], before.window.stats()[0] * 3.0 + 10.0
            cfg = restarted.settings
            first, second = (
                before.update(metric, t, value, cfg),
                after.update(metric, t, value, cfg),
            )
            assert (first.score, first.z, first.path) == (second.score, second.z, second.path)
        assert restarted.series_count == never_stopped.series_count
        # Live, the durable consumer acknowledges JetStream snapshots without learning them
        # (the replica that published one had learned it while polling).
        observed = restarted.observations
        await poller.poll_once()
        last = (await js.stream_info("SYSTEM_EVENTS")).state.last_seq
        while (
            await js.consumer_info("SYSTEM_EVENTS", "anomaly-detector")
        ).ack_floor.stream_seq < last:
            assert time.monotonic() < deadline + 20, "snapshot not acknowledged"
            await asyncio.sleep(0.05)
        assert restarted.observations == observed
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 20)
