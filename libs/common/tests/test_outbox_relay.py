"""The relay in-process against real PostgreSQL and nats-server."""

import asyncio
import contextlib
import time
from pathlib import Path

import psycopg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from backbone.events import CloudEvent, decode_nats, dedup_id
from backbone.messaging import apply_streams, load_catalog
from backbone.outbox import (
    PARTITIONS,
    OutboxRelay,
    RelayConfig,
    enqueue,
    enqueue_many,
    list_dead,
    migrate,
    outbox_status,
    retry_dead,
)

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"


@pytest.fixture
def catalog():
    return load_catalog(STREAMS)


@pytest.fixture
async def js(nats_client, catalog):
    js = nats_client.jetstream()
    await apply_streams(js, catalog)
    return js


@pytest.fixture
async def db(postgres_dsn):
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        await migrate(conn)
        yield conn


def event(n, *, key="k", type_="mcp.outbox.test", **extra):
    return CloudEvent.create(
        type=type_, source="/test/outbox", id=f"e-{n}", subject=key, data={"n": n, **extra}
    )


async def stream_events(js, stream="MCP_EVENTS", subject=">"):
    info = await js.stream_info(stream)
    total = info.state.messages
    if total == 0:
        return []
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
    )
    out = []
    try:
        while len(out) < total:
            for msg in await sub.fetch(min(1000, total - len(out)), timeout=5):
                out.append(
                    (msg.metadata.sequence.stream, decode_nats(msg.headers, msg.data), msg.headers)
                )
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return sorted(out, key=lambda item: item[0])


async def until(predicate, *, timeout_s=15.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(relay):
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.request_stop()
        await asyncio.wait_for(task, 20)


def relay_for(dsn, nc, catalog, **config):
    return OutboxRelay(
        dsn=dsn,
        nc=nc,
        catalog=catalog,
        config=RelayConfig(**{"poll_interval_s": 0.5, "ack_timeout_s": 2.0, **config}),
    )


async def backlog(dsn):
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return (await outbox_status(conn)).backlog


async def test_committed_rows_reach_the_stream_once_and_leave_the_table(
    postgres_dsn, db, js, nats_client, catalog
):
    async with db.transaction():
        for n in range(50):
            await enqueue(db, event(n, key=f"k{n % 5}"))
    relay = relay_for(postgres_dsn, nats_client, catalog)
    async with running(relay):
        await until(lambda: relay.stats.published == 50, what="50 published")
    stored = await stream_events(js)
    assert [e.id for _, e, _ in stored] == [f"e-{n}" for n in range(50)]
    assert stored[0][2]["Nats-Msg-Id"] == dedup_id(stored[0][1])
    assert await backlog(postgres_dsn) == 0
    assert relay.owned_partitions == frozenset()  # released on stop


async def test_notify_wakes_the_relay_long_before_the_poll_interval(
    postgres_dsn, db, js, nats_client, catalog
):
    relay = relay_for(postgres_dsn, nats_client, catalog, poll_interval_s=30.0)
    async with running(relay):
        await until(lambda: len(relay.owned_partitions) == PARTITIONS, what="partitions")
        await asyncio.sleep(0.2)  # let the relay go idle on its 30 s poll
        started = time.monotonic()
        async with db.transaction():
            await enqueue(db, event(1))
        await until(lambda: relay.stats.published == 1, timeout_s=5, what="publish")
        assert time.monotonic() - started < 2.0


async def test_rolled_back_transactions_never_publish(postgres_dsn, db, js, nats_client, catalog):
    relay = relay_for(postgres_dsn, nats_client, catalog)
    async with running(relay):
        for n in range(20):
            with contextlib.suppress(RuntimeError):
                async with db.transaction():
                    await enqueue(db, event(n))
                    if n % 2:
                        raise RuntimeError("roll back")
        await until(lambda: relay.stats.published == 10, what="10 published")
        await asyncio.sleep(0.3)
    ids = {e.id for _, e, _ in await stream_events(js)}
    assert ids == {f"e-{n}" for n in range(0, 20, 2)}


async def test_poison_rows_go_to_the_dead_table_and_the_rest_flows(
    postgres_dsn, db, js, nats_client, catalog
):
    async with db.transaction():
        await enqueue(db, event(1))
        await enqueue(db, event(2, type_="nowhere.to.go"))  # no stream captures it
        await enqueue(db, event(3, blob="x" * 2_000_000))  # above max_payload
        await enqueue(db, event(4))
    relay = relay_for(postgres_dsn, nats_client, catalog)
    async with running(relay):
        await until(
            lambda: relay.stats.published == 2 and relay.stats.dead == 2, what="2 ok, 2 dead"
        )
    assert [e.id for _, e, _ in await stream_events(js)] == ["e-1", "e-4"]
    dead = await list_dead(db)
    assert [(d.event_id, d.error.split(":")[0]) for d in dead] == [
        ("e-2", "NoStreamForSubjectError"),
        ("e-3", "MaxPayloadError"),
    ]
    assert all(d.attempts == 1 for d in dead)
    await db.commit()
    # Retried rows come back with new ids; the subject still has no stream, so e-2 dies again.
    new_ids = await retry_dead(db, [dead[0].id])
    assert len(new_ids) == 1
    assert new_ids[0] > dead[1].id
    assert [d.event_id for d in await list_dead(db)] == ["e-3"]


async def test_nats_outage_loses_and_duplicates_nothing(
    postgres_dsn, db, js, nats_client, nats_server, catalog
):
    relay = relay_for(postgres_dsn, nats_client, catalog, batch_size=50, ack_timeout_s=1.0)
    total = 600
    async with running(relay):

        async def produce():
            for n in range(total):
                async with db.transaction():
                    await enqueue(db, event(n, key=f"k{n % 7}"))
                await asyncio.sleep(0.003)

        producer = asyncio.create_task(produce())
        await until(lambda: relay.stats.published > 100, what="first publishes")
        await asyncio.to_thread(nats_server.stop)
        stopped_at = time.monotonic()
        await until(lambda: time.monotonic() - stopped_at > 5, timeout_s=10, what="5 s outage")
        await asyncio.to_thread(nats_server.start)
        await producer
        await until(_empty(postgres_dsn), timeout_s=30, what="backlog drained")
    stored = await stream_events(js)
    ids = [e.id for _, e, _ in stored]
    assert len(ids) == total
    assert set(ids) == {f"e-{n}" for n in range(total)}
    per_key = {}
    for _, e, _ in stored:
        per_key.setdefault(e.subject, []).append(e.data["n"])
    assert all(ns == sorted(ns) for ns in per_key.values())


def _empty(dsn):
    async def check():
        return await backlog(dsn) == 0

    return check


async def test_two_relays_split_the_partitions_and_take_over_from_a_dead_one(
    postgres_dsn, nats_client, js, catalog
):
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        await migrate(conn)
    first = relay_for(postgres_dsn, nats_client, catalog, rebalance_interval_s=0.1)
    second = relay_for(postgres_dsn, nats_client, catalog, rebalance_interval_s=0.1)
    async with running(first):
        await until(lambda: len(first.owned_partitions) == PARTITIONS, what="first owns all")
        async with running(second):
            await until(
                lambda: (
                    len(first.owned_partitions) == len(second.owned_partitions) == PARTITIONS // 2
                ),
                what="even split",
            )
            assert not first.owned_partitions & second.owned_partitions
        started = time.monotonic()
        await until(lambda: len(first.owned_partitions) == PARTITIONS, what="take-over")
        assert time.monotonic() - started < 2.0


async def test_mark_retention_keeps_published_rows_out_of_the_backlog(
    postgres_dsn, db, js, nats_client, catalog
):
    async with db.transaction():
        await enqueue_many(db, [event(n) for n in range(10)])
    relay = relay_for(postgres_dsn, nats_client, catalog, retention="mark")
    async with running(relay):
        await until(lambda: relay.stats.published == 10, what="published")
    cur = await db.execute("SELECT count(*) FROM backbone_outbox WHERE published_at IS NOT NULL")
    assert (await cur.fetchone())[0] == 10
    assert await backlog(postgres_dsn) == 0


async def test_housekeeping_vacuums_on_its_own_connection_while_rows_flow(
    postgres_dsn, db, js, nats_client, catalog
):
    relay = relay_for(
        postgres_dsn,
        nats_client,
        catalog,
        housekeeping_interval_s=0.05,
        vacuum_dead_tuples=100,
    )
    async with running(relay):
        for batch in range(4):
            async with db.transaction():
                await enqueue_many(db, [event(batch * 200 + n) for n in range(200)])
        await until(lambda: relay.stats.published == 800, what="published")
        await until(lambda: relay.stats.vacuums >= 1, what="a vacuum")

    async def relay_connections() -> int:
        cur = await db.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (relay.name,),
        )
        return (await cur.fetchone())[0]

    # Every relay connection, the housekeeper's included, is closed on stop (the server ends a
    # backend a moment after its client left).
    await until(lambda: _is_zero(relay_connections()), what="relay connections closed")
    assert len(await stream_events(js)) == 800


async def _is_zero(count):
    return await count == 0


async def test_stop_finishes_the_batch_in_flight(postgres_dsn, db, js, nats_client, catalog):
    async with db.transaction():
        await enqueue_many(db, [event(n, key=f"k{n}") for n in range(3000)])
    relay = relay_for(postgres_dsn, nats_client, catalog, batch_size=3000)
    task = asyncio.create_task(relay.run())
    while relay.in_flight == 0:
        await asyncio.sleep(0)
    relay.request_stop()  # while 3000 publishes are in flight
    await asyncio.wait_for(task, 20)
    assert relay.stats.published == 3000
    assert len(await stream_events(js)) == 3000
    assert await backlog(postgres_dsn) == 0
