import asyncio
import time
from pathlib import Path

import httpx
import orjson
import psycopg

from backbone.events import CloudEvent, decode_nats
from backbone.messaging import apply_streams, load_catalog
from backbone.outbox import enqueue
from outbox_relay import Settings, create_app

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"


async def until(predicate, *, timeout_s=15.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_app_relays_serves_health_and_reports_outbox_metrics(
    postgres_dsn, nats_server, nats_client
):
    js = nats_client.jetstream()
    await apply_streams(js, load_catalog(STREAMS))
    snapshots = await nats_client.subscribe("system.metrics.outbox-relay")
    settings = Settings(
        nats={"servers": [nats_server.url]},
        postgres={"dsn": postgres_dsn},
        http={"port": 0},
        streams_file=STREAMS,
        telemetry={"metrics_interval_s": 0.3},
        outbox={"poll_interval_s": 0.2},
    )
    app = create_app(settings, install_signal_handlers=False)
    task = asyncio.create_task(app.run())
    try:

        async def ready():
            if app.ops is None or not app.ops.running:
                return False
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{app.ops.url}/readyz")).status_code == 200

        await until(ready, what="/readyz 200")
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn, conn.transaction():
            await enqueue(
                conn, CloudEvent.create(type="mcp.app.test", source="/t", id="a-1", data={})
            )

        async def published():
            return (await js.stream_info("MCP_EVENTS")).state.messages == 1

        await until(published, what="event in the stream")

        async def snapshot_with_gauges():
            msg = await snapshots.next_msg(timeout=5)
            data = decode_nats(msg.headers, msg.data).data
            return (
                data["metrics"].get("outbox_partitions_owned") == 64
                and data["metrics"]["events_published"] >= 0
            )

        await until(snapshot_with_gauges, what="metrics snapshot with outbox gauges")
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"{app.ops.url}/metrics")).text
        assert "backbone_outbox_batch_latency_seconds" in body
        assert (
            'backbone_events_published_total{stream="MCP_EVENTS",type="mcp.app.test"} 1.0' in body
        )
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 20)
    assert not app.ops.running


def test_settings_read_the_postgres_dsn_and_outbox_knobs(monkeypatch):
    monkeypatch.setenv("BACKBONE_POSTGRES__DSN", "postgresql://u@db:5432/app")
    monkeypatch.setenv("BACKBONE_OUTBOX__BATCH_SIZE", "250")
    monkeypatch.setenv("BACKBONE_OUTBOX__RETENTION", "mark")
    settings = Settings()
    assert settings.postgres.dsn_value() == "postgresql://u@db:5432/app"
    assert "db:5432" not in repr(settings.postgres)
    assert (settings.outbox.batch_size, settings.outbox.retention) == (250, "mark")
    assert orjson.dumps(settings.outbox.model_dump())
