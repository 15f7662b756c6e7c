import asyncio
import contextlib

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider

from backbone import outbox
from backbone.events import CloudEvent, decode_nats, dedup_id
from backbone.outbox import (
    NOTIFY_CHANNEL,
    NotInTransactionError,
    build_record,
    enqueue,
    enqueue_many,
    enqueue_sync,
    migrate,
    migrate_sync,
    migrations,
)


def event(n=1, **overrides):
    base = {"type": "mcp.outbox.test", "source": "/test/outbox", "id": f"e-{n}", "data": {"n": n}}
    return CloudEvent.create(**{**base, **overrides})


def test_public_api_is_sorted_and_complete():
    assert outbox.__all__ == sorted(outbox.__all__, key=lambda n: (not n.isupper(), n))
    assert all(hasattr(outbox, name) for name in outbox.__all__)


def test_migrations_are_versioned_files_in_order():
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "init"
    assert "CREATE TABLE backbone_outbox" in found[0].sql


async def test_concurrent_migrators_apply_each_migration_once(postgres_dsn):
    async def one():
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
            return await migrate(conn)

    results = await asyncio.gather(one(), one(), one())
    assert sorted(len(r) for r in results) == [0, 0, len(migrations())]
    with psycopg.connect(postgres_dsn) as conn:
        assert migrate_sync(conn) == []


def test_record_keeps_the_nats_message_and_routing():
    original = event(subject="order-9")
    record = build_record(original)
    assert record.subject == "mcp.outbox.test"
    assert record.ordering_key == "order-9"
    assert record.msg_id == record.headers["Nats-Msg-Id"] == dedup_id(event())
    assert decode_nats(record.headers, record.payload) == original
    assert build_record(event()).ordering_key == "/test/outbox"  # no subject: the source
    assert build_record(event(), key="k").ordering_key == "k"
    structured = build_record(event(), mode="structured")
    assert structured.headers["Content-Type"] == "application/cloudevents+json"


def test_record_carries_the_active_trace_context():
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("tx") as span:
        record = build_record(event())
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert record.traceparent is not None
    assert trace_id in record.traceparent
    assert record.headers["traceparent"] == record.traceparent


async def test_enqueue_commits_and_rolls_back_with_the_transaction(postgres_dsn):
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        await migrate(conn)
        with contextlib.suppress(RuntimeError):
            async with conn.transaction():
                await enqueue(conn, event(1))
                raise RuntimeError("business failure")
        async with conn.transaction():
            row_id = await enqueue(conn, event(2), key="acct-1")
        cur = await conn.execute(
            "SELECT id, event_id, ordering_key, subject, msg_id, partition, attempts "
            "FROM backbone_outbox"
        )
        rows = await cur.fetchall()
    assert len(rows) == 1
    assert rows[0][:5] == (row_id, "e-2", "acct-1", "mcp.outbox.test", dedup_id(event(2)))
    assert 0 <= rows[0][5] < outbox.PARTITIONS
    assert rows[0][6] == 0


async def test_enqueue_refuses_autocommit_outside_a_transaction(postgres_dsn):
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        await migrate(conn)
        with pytest.raises(NotInTransactionError):
            await enqueue(conn, event())
        async with conn.transaction():
            await enqueue(conn, event())


def test_sync_enqueue_and_batches(postgres_dsn):
    with psycopg.connect(postgres_dsn) as conn:
        migrate_sync(conn)
        first = enqueue_sync(conn, event(1))
        conn.commit()
        assert first > 0


async def test_enqueue_many_keeps_the_given_order(postgres_dsn):
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        await migrate(conn)
        ids = await enqueue_many(conn, [event(n, subject=f"k{n % 3}") for n in range(10)])
        await conn.commit()
        assert ids == sorted(ids)
        cur = await conn.execute("SELECT event_id FROM backbone_outbox ORDER BY id")
        assert [r[0] for r in await cur.fetchall()] == [f"e-{n}" for n in range(10)]
        assert await enqueue_many(conn, []) == []


async def test_same_key_writers_are_serialised_until_commit(postgres_dsn):
    async with (
        await psycopg.AsyncConnection.connect(postgres_dsn) as first,
        await psycopg.AsyncConnection.connect(postgres_dsn) as second,
    ):
        await migrate(first)
        await first.commit()
        await enqueue(first, event(1), key="same")
        blocked = asyncio.create_task(enqueue(second, event(2), key="same"))
        await asyncio.sleep(0.3)
        assert not blocked.done()  # waits for the first transaction's key lock
        await first.commit()
        second_id = await asyncio.wait_for(blocked, 5)
        await second.commit()
        cur = await first.execute("SELECT id FROM backbone_outbox WHERE event_id = 'e-1'")
        assert (await cur.fetchone())[0] < second_id


async def test_commit_notifies_listeners_and_rollback_does_not(postgres_dsn):
    async with (
        await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(postgres_dsn) as writer,
    ):
        await migrate(writer)
        await writer.commit()
        await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        await enqueue(writer, event(1))
        await writer.rollback()
        await enqueue_many(writer, [event(2), event(3)])
        await writer.commit()
        received = [n async for n in listener.notifies(timeout=1.0)]
    assert [n.channel for n in received] == [NOTIFY_CHANNEL]
