"""Fault tests of the relay as real processes: SIGKILL loops, three replicas, real servers."""

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from backbone.events import CloudEvent
from backbone.messaging import apply_streams, load_catalog
from backbone.outbox import enqueue, migrate, outbox_status

pytestmark = pytest.mark.slow

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"
SUBJECT_TYPE = "mcp.outbox.fault"
KEYS = [f"key-{n}" for n in range(40)]


class RelayProcess:
    """One `outbox-relay` process with its log in the test's temp dir."""

    def __init__(self, *, nats_url, dsn, log_dir, name):
        self.env = {
            **os.environ,
            "BACKBONE_NATS__SERVERS": nats_url,
            "BACKBONE_NATS__RECONNECT_WAIT_S": "0.1",
            "BACKBONE_POSTGRES__DSN": dsn,
            "BACKBONE_HTTP__PORT": "0",
            "BACKBONE_STREAMS_FILE": str(STREAMS),
            "BACKBONE_TELEMETRY__METRICS_INTERVAL_S": "1",
            "BACKBONE_OUTBOX__REBALANCE_INTERVAL_S": "0.2",
            "BACKBONE_OUTBOX__POLL_INTERVAL_S": "0.5",
            "BACKBONE_OUTBOX__BATCH_SIZE": "500",
            "BACKBONE_LOG_LEVEL": "INFO",
        }
        self.log_path = log_dir / f"{name}.log"
        self.proc = None

    def start(self):
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "outbox_relay"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(20)
        return self.proc.returncode if self.proc else None


@pytest.fixture
def spawn(nats_server, postgres_dsn, tmp_path):
    started = []

    def make(name):
        relay = RelayProcess(
            nats_url=nats_server.url, dsn=postgres_dsn, log_dir=tmp_path, name=name
        )
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.kill()


@pytest.fixture
async def setup(postgres_dsn, nats_client):
    js = nats_client.jetstream()
    await apply_streams(js, load_catalog(STREAMS))
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        await migrate(conn)
        await conn.execute("CREATE TABLE key_counter (key text PRIMARY KEY, n int NOT NULL)")
        await conn.execute(
            "CREATE TABLE key_commit (key text, n int, event_ids text[], PRIMARY KEY (key, n))"
        )
        await conn.execute("INSERT INTO key_counter SELECT unnest(%s::text[]), 0", (KEYS,))
        await conn.commit()
    return js


async def produce(dsn, *, total, producers=6, rollback_ratio=0.05, seed=7):
    """Commit `total` events from concurrent transactions (one key, 1-8 events each).

    Some transactions roll back.

    The commit order per key is recorded under the key's counter row lock, taken after enqueue.
    """
    reserved = 0
    rng = random.Random(seed)

    async def worker():
        nonlocal reserved
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            while reserved < total:
                key = rng.choice(KEYS)
                size = min(rng.randint(1, 8), total - reserved)
                reserved += size  # no await since the check: no other worker ran
                roll_back = rng.random() < rollback_ratio
                ids = [f"{key}-{uuid.uuid4().hex[:12]}" for _ in range(size)]
                with contextlib.suppress(RuntimeError):
                    async with conn.transaction():
                        for event_id in ids:
                            event = CloudEvent.create(
                                type=SUBJECT_TYPE,
                                source="/test/fault",
                                id=event_id,
                                subject=key,
                                data={"k": key},
                            )
                            await enqueue(conn, event)
                        cur = await conn.execute(
                            "UPDATE key_counter SET n = n + 1 WHERE key = %s RETURNING n", (key,)
                        )
                        (n,) = await cur.fetchone()
                        await conn.execute(
                            "INSERT INTO key_commit VALUES (%s, %s, %s)", (key, n, ids)
                        )
                        if roll_back:
                            raise RuntimeError("roll back")
                if roll_back:
                    reserved -= size

    await asyncio.gather(*(worker() for _ in range(producers)))


async def expected_order(dsn):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT key, event_ids FROM key_commit ORDER BY key, n")
        order = {}
        for key, ids in await cur.fetchall():
            order.setdefault(key, []).extend(ids)
        return order


async def stream_order(js):
    info = await js.stream_info("MCP_EVENTS")
    total = info.state.messages
    sub = await js.pull_subscribe(
        SUBJECT_TYPE,
        stream="MCP_EVENTS",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    ids = []
    while len(ids) < total:
        msgs = await sub.fetch(min(2000, total - len(ids)), timeout=5)
        ids.extend(
            (m.metadata.sequence.stream, m.headers["ce-subject"], m.headers["ce-id"]) for m in msgs
        )
    await sub.unsubscribe()
    ids.sort()
    per_key = {}
    for _, key, event_id in ids:
        per_key.setdefault(key, []).append(event_id)
    return [event_id for _, _, event_id in ids], per_key


async def backlog(dsn):
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await outbox_status(conn)


async def drained(dsn, *, timeout_s=40):
    deadline = time.monotonic() + timeout_s
    while (status := await backlog(dsn)).backlog:
        assert time.monotonic() < deadline, f"backlog not drained: {status}"
        await asyncio.sleep(0.1)


async def assert_exactly_once_in_commit_order(js, dsn, total):
    expected = await expected_order(dsn)
    ids, per_key = await stream_order(js)
    assert len(ids) == len(set(ids)) == total
    assert per_key == expected


async def test_sigkilled_relay_loses_nothing_and_keeps_per_key_commit_order(
    setup, postgres_dsn, nats_server, tmp_path
):
    total = 20_000
    relay = RelayProcess(nats_url=nats_server.url, dsn=postgres_dsn, log_dir=tmp_path, name="relay")
    relay.start()
    producer = asyncio.create_task(produce(postgres_dsn, total=total))
    kills = 0
    rng = random.Random(3)
    while not producer.done():
        await asyncio.wait({producer}, timeout=rng.uniform(1.0, 2.0))
        relay.kill()
        kills += 1
        relay.start()
    await producer
    await drained(postgres_dsn)
    assert relay.terminate() == 0
    assert kills >= 3
    await assert_exactly_once_in_commit_order(setup, postgres_dsn, total)


async def test_three_relays_share_partitions_and_survive_losing_one(
    setup, postgres_dsn, nats_server, tmp_path
):
    total = 6_000
    relays = [
        RelayProcess(
            nats_url=nats_server.url, dsn=postgres_dsn, log_dir=tmp_path, name=f"relay-{n}"
        )
        for n in range(3)
    ]
    for relay in relays:
        relay.start()
    deadline = time.monotonic() + 30
    # Each process runs two relay loops (BACKBONE_WORKERS default), each its own member.
    while (status := await backlog(postgres_dsn)).relays < 6:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    producer = asyncio.create_task(produce(postgres_dsn, total=total, seed=11))
    await asyncio.wait({producer}, timeout=2.0)
    relays[0].kill()  # its partitions move to the other two
    await producer
    await drained(postgres_dsn)
    status = await backlog(postgres_dsn)
    assert status.relays == 4
    assert status.partitions_owned == 64
    assert [relay.terminate() for relay in relays[1:]] == [0, 0]
    await assert_exactly_once_in_commit_order(setup, postgres_dsn, total)
