"""`backbone anomaly list|feedback` against a real nats-server and a running detector."""

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from anomaly_detector.app import create_app
from anomaly_detector.settings import Settings
from backbone.cli import app as cli
from backbone.events import CloudEvent
from backbone.messaging import Publisher, apply_streams, load_catalog

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"
runner = CliRunner()


def snapshot(i: int, latency_ms: float) -> CloudEvent:
    return CloudEvent.create(
        type="system.metrics.billing",
        source="/backbone/billing",
        time=datetime.fromtimestamp(1_750_000_000 + i, UTC),
        data={
            "service": "billing",
            "metrics": {"handler_latency_p99_ms": latency_ms * (1 + 0.04 * ((i * 7) % 3 - 1))},
        },
    )


async def invoke(url: str, *args: str):
    env = {"BACKBONE_NATS__SERVERS": url, "BACKBONE_STREAMS_FILE": str(STREAMS)}
    return await asyncio.to_thread(runner.invoke, cli, ["anomaly", *args], env=env)


async def test_list_shows_alerts_and_feedback_reaches_the_series_threshold(
    nats_server, nats_client
):
    catalog = load_catalog(STREAMS)
    await apply_streams(nats_client.jetstream(), catalog)
    settings = Settings(
        nats={"servers": [nats_server.url]},
        http={"port": 0},
        streams_file=STREAMS,
        telemetry={"publish_metrics": False},
        anomaly={"stats_interval_s": 0, "replay_window_s": 0, "warmup_points": 40},
    )
    app = create_app(settings, install_signal_handlers=False)
    task = asyncio.create_task(app.run())
    try:
        deadline = time.monotonic() + 20
        while not app.ready.is_set():
            assert time.monotonic() < deadline
            assert not task.done()
            await asyncio.sleep(0.05)
        publisher = Publisher(nats_client, catalog=catalog)
        await publisher.publish_many([snapshot(i, 5.0) for i in range(60)])
        await publisher.publish_many([snapshot(i, 50.0) for i in range(60, 63)])
        rows: list[dict] = []
        while not rows:
            assert time.monotonic() < deadline, "no alert listed"
            listed = await invoke(nats_server.url, "list", "--type", "anomaly", "--json")
            assert listed.exit_code == 0, listed.output
            rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert rows[0]["entity"] == "billing"
        assert rows[0]["metric"] == "handler_latency_p99_ms"

        missing = await invoke(nats_server.url, "feedback", "no-such-id", "--false-positive")
        assert missing.exit_code == 1
        both = await invoke(nats_server.url, "feedback", rows[0]["id"])
        assert both.exit_code == 1

        state = app.service.series("billing", "handler_latency_p99_ms")
        cut = state.threshold.value
        given = await invoke(nats_server.url, "feedback", rows[0]["id"], "--false-positive")
        assert given.exit_code == 0, given.output
        out = json.loads(given.stdout)
        assert out["type"] == "ai.feedback.false_positive"
        assert out["stream"] == "AI_EVENTS"
        assert (out["entity"], out["metric"]) == ("billing", "handler_latency_p99_ms")
        while app.feedback.applied < 1:
            assert time.monotonic() < deadline + 10, "feedback not applied"
            await asyncio.sleep(0.05)
        assert state.threshold.value > cut
        assert state.sensitivity > 1.0

        series_ref = await invoke(
            nats_server.url, "feedback", "billing/handler_latency_p99_ms", "--missed"
        )
        assert series_ref.exit_code == 0, series_ref.output
        listed = await invoke(nats_server.url, "list", "--type", "feedback", "--json")
        kinds = [json.loads(line)["type"] for line in listed.stdout.splitlines()]
        assert kinds == ["ai.feedback.false_positive", "ai.feedback.missed"]
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 20)
