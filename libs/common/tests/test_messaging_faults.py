"""No-loss claims of the messaging layer, proven by killing things (real nats-server)."""

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from backbone.errors import BackboneError
from backbone.events import CloudEvent, decode_nats
from backbone.messaging import PostgresIdempotency, Publisher, apply_streams, load_catalog

ROOT = Path(__file__).resolve().parents[3]
CONSUMER = Path(__file__).with_name("fault_consumer_main.py")
N_EVENTS = 10_000

pytestmark = pytest.mark.slow


async def publish_all(nats_client, n):
    catalog = load_catalog(ROOT / "deploy" / "streams.yaml")
    await apply_streams(nats_client.jetstream(), catalog)
    publisher = Publisher(nats_client, catalog=catalog)
    events = [
        CloudEvent.create(type="mcp.tool.called", source="/fault", id=f"e{i}", data={"i": i})
        for i in range(n)
    ]
    results = await publisher.publish_many(events)
    assert not [r for r in results if isinstance(r, Exception)]


def start_consumer(url, mode, target):
    proc = subprocess.Popen(
        [sys.executable, str(CONSUMER), url, mode, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc


async def consumer_idle(nats_client):
    info = await nats_client.jetstream().consumer_info("MCP_EVENTS", "fault")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def run_with_kills(nats_server, nats_client, mode, target, count_effects, kills=4):
    """Run the consumer, SIGKILL it `kills` times mid-flight, restart, let it finish."""
    killed_mid_flight = 0
    for _ in range(kills):
        proc = start_consumer(nats_server.url, mode, target)
        before = count_effects()
        deadline = time.monotonic() + 20
        # Let it get going, then kill it while it works.
        while count_effects() - before < 800 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        proc.kill()
        proc.wait()
        proc.stdout.close()
        killed_mid_flight += int(count_effects() < N_EVENTS)
    proc = start_consumer(nats_server.url, mode, target)
    try:
        deadline = time.monotonic() + 90
        while not await consumer_idle(nats_client):
            assert time.monotonic() < deadline, "consumer did not finish"
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        code = proc.wait(20)
        proc.stdout.close()
        assert code == 0
    return killed_mid_flight


async def test_sigkilled_consumer_handles_every_event_kv_idempotency(
    nats_server, nats_client, tmp_path
):
    await publish_all(nats_client, N_EVENTS)
    out = tmp_path / "effects.txt"
    out.touch()

    def effects():
        return out.read_bytes().count(b"\n")

    kills = await run_with_kills(nats_server, nats_client, "kv", out, effects)
    lines = out.read_text().split()
    assert kills >= 3, "the consumer was not killed mid-flight"
    # Every event was handled...
    assert set(lines) == {f"e{i}" for i in range(N_EVENTS)}
    # ...and the KV store removed redeliveries of processed events. What remains are effects
    # whose process died between the effect and the mark (documented window): at most the
    # handlers in flight at each kill.
    assert len(lines) - N_EVENTS <= kills * 8


async def test_sigkilled_consumer_side_effects_exactly_once_with_inbox(
    nats_server, nats_client, postgres_dsn
):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (event_id text NOT NULL)")  # no unique: duplicates show
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        await PostgresIdempotency().ensure_table(conn)
    await publish_all(nats_client, N_EVENTS)
    counter = psycopg.connect(postgres_dsn, autocommit=True)

    def effects():
        return counter.execute("SELECT count(*) FROM effects").fetchone()[0]

    try:
        kills = await run_with_kills(nats_server, nats_client, "pg", postgres_dsn, effects)
        total, distinct = counter.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM effects"
        ).fetchone()
    finally:
        counter.close()
    assert kills >= 3
    assert (total, distinct) == (N_EVENTS, N_EVENTS)


async def test_nats_restart_mid_run_loses_no_acknowledged_publish(nats_server, nats_client):
    catalog = load_catalog(ROOT / "deploy" / "streams.yaml")
    await apply_streams(nats_client.jetstream(), catalog)
    publisher = Publisher(nats_client, catalog=catalog, timeout_s=0.5, attempts=4, retry_wait_s=0.2)
    acknowledged: list[str] = []
    failed: list[str] = []

    async def produce():
        for i in range(3000):
            event = CloudEvent.create(type="mcp.tool.called", source="/restart", id=f"r{i}")
            try:
                await publisher.publish(event)
            except BackboneError:
                failed.append(event.id)
            else:
                acknowledged.append(event.id)

    task = asyncio.create_task(produce())
    while len(acknowledged) < 1000:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(nats_server.stop)  # graceful stop, same store
    await asyncio.sleep(1.0)
    await asyncio.to_thread(nats_server.start)
    await asyncio.wait_for(task, 120)

    js = nats_client.jetstream()
    info = await js.stream_info("MCP_EVENTS")
    stored = set()
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg("MCP_EVENTS", seq)
        stored.add(decode_nats(msg.headers, msg.data).id)
    assert set(acknowledged) <= stored
    assert len(acknowledged) >= 2000
    # Dedup ids kept retries from storing anything twice.
    assert info.state.messages == len(stored)
