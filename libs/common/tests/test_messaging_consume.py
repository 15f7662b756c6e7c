import asyncio
from pathlib import Path

import pytest

from backbone.events import CloudEvent, decode_nats, encode_nats
from backbone.messaging import (
    Consumer,
    IdempotencyStore,
    Publisher,
    apply_streams,
    list_dead_letters,
    load_catalog,
    replay_dead_letter,
)

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"


async def wait_until(predicate, timeout_s=10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def publisher(nats_client):
    catalog = load_catalog(STREAMS)
    await apply_streams(nats_client.jetstream(), catalog)
    return Publisher(nats_client, catalog=catalog)


def event(i, **kw):
    return CloudEvent.create(
        type="mcp.tool.called", source="/test", id=f"ev-{i}", data={"i": i}, **kw
    )


def consumer(nats_client, handler, **kw):
    options = {
        "stream": "MCP_EVENTS",
        "durable": "worker",
        "backoff_s": (0.05,),
        "fetch_timeout_s": 0.2,
    }
    return Consumer(nats_client, handler=handler, **{**options, **kw})


async def test_successful_handling_acks_every_event(nats_client, publisher):
    seen = []

    async def handler(ev, delivery):
        seen.append((ev.id, delivery.stream_seq))

    await publisher.publish_many([event(i) for i in range(50)])
    c = consumer(nats_client, handler)
    await c.start()
    await wait_until(lambda: len(seen) == 50)
    await c.stop()
    assert sorted(s for _, s in seen) == list(range(1, 51))
    assert await c.pending() == 0


async def test_failure_is_retried_with_backoff_then_succeeds(nats_client, publisher):
    attempts = []

    async def handler(ev, delivery):
        attempts.append(delivery.num_delivered)
        if delivery.num_delivered < 3:
            raise RuntimeError("flaky")

    await publisher.publish(event(1))
    c = consumer(nats_client, handler, max_deliver=5)
    await c.start()
    await wait_until(lambda: c.stats.handled == 1)
    await c.stop()
    assert attempts == [1, 2, 3]
    assert c.stats.dead_lettered == 0


async def test_poison_message_goes_to_dlq_with_error_headers_and_replays(nats_client, publisher):
    async def always_fails(ev, delivery):
        raise ValueError("cannot handle this")

    original = await publisher.publish(event(7, subject="s-7"))
    c = consumer(nats_client, always_fails, max_deliver=3)
    await c.start()
    await wait_until(lambda: c.stats.dead_lettered == 1)
    await c.stop()
    js = nats_client.jetstream()
    letters = await list_dead_letters(js)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.subject == "dlq.mcp.tool.called"
    assert letter.original_subject == "mcp.tool.called"
    assert (letter.original_stream, letter.original_seq) == ("MCP_EVENTS", original.seq)
    assert letter.delivery_count == 3
    assert letter.error_type == "ValueError"
    assert letter.error_message == "cannot handle this"
    assert letter.event_id == "ev-7"
    # The original is terminated: nothing pending.
    assert await c.pending() == 0

    ack = await replay_dead_letter(js, letter)
    assert ack.stream == "MCP_EVENTS"
    assert ack.seq > original.seq
    replayed = await js.get_msg("MCP_EVENTS", ack.seq)
    assert decode_nats(replayed.headers, replayed.data).id == "ev-7"
    assert await list_dead_letters(js) == []


async def test_undecodable_message_is_dead_lettered_without_calling_the_handler(
    nats_client, publisher
):
    calls = []

    async def handler(ev, delivery):
        calls.append(ev)

    js = nats_client.jetstream()
    await js.publish("mcp.garbage", b"not a cloud event")
    c = consumer(nats_client, handler)
    await c.start()
    await wait_until(lambda: c.stats.dead_lettered == 1)
    await c.stop()
    assert calls == []
    [letter] = await list_dead_letters(js)
    assert letter.error_type == "BindingError"


async def test_idempotency_store_skips_redelivered_processed_events(nats_client, publisher):
    js = nats_client.jetstream()
    store = await IdempotencyStore.open(js)
    effects = []

    async def handler(ev, delivery):
        effects.append(ev.id)

    await publisher.publish(event(1))
    c = consumer(nats_client, handler, idempotency=store)
    await c.start()
    await wait_until(lambda: c.stats.handled == 1)
    # The same event again, outside JetStream's dedup (a different msg id): the store catches it.
    headers, payload = _binary(event(1))
    await js.publish("mcp.tool.called", payload, headers=headers)
    await wait_until(lambda: c.stats.skipped_duplicates == 1)
    await c.stop()
    assert effects == ["ev-1"]


def _binary(ev):
    headers, payload = encode_nats(ev)
    return headers, payload


async def test_stop_waits_for_in_flight_handlers_and_acks_them(nats_client, publisher):
    release = asyncio.Event()
    started = []

    async def slow(ev, delivery):
        started.append(ev.id)
        await release.wait()

    await publisher.publish_many([event(i) for i in range(5)])
    c = consumer(nats_client, slow, concurrency=5)
    await c.start()
    await wait_until(lambda: len(started) == 5)
    stopping = asyncio.create_task(c.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()
    release.set()
    await stopping
    assert c.stats.handled == 5
    info = await nats_client.jetstream().consumer_info("MCP_EVENTS", "worker")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_two_replicas_share_one_durable(nats_client, publisher):
    handled_by = {"a": 0, "b": 0}

    def make(name):
        async def handler(ev, delivery):
            handled_by[name] += 1
            await asyncio.sleep(0.001)

        return handler

    await publisher.publish_many([event(i) for i in range(400)])
    a = consumer(nats_client, make("a"), batch=10, concurrency=4)
    b = consumer(nats_client, make("b"), batch=10, concurrency=4)
    await a.start()
    await b.start()
    await wait_until(lambda: handled_by["a"] + handled_by["b"] == 400)
    await a.stop()
    await b.stop()
    assert handled_by["a"] > 0
    assert handled_by["b"] > 0


async def test_new_durable_can_start_at_a_sequence_and_an_existing_one_keeps_its_position(
    nats_client, publisher
):
    seen = []

    async def handler(ev, delivery):
        seen.append(delivery.stream_seq)

    await publisher.publish_many([event(i) for i in range(10)])
    c = consumer(nats_client, handler, deliver_policy="by_start_sequence", opt_start_seq=8)
    await c.start()
    await wait_until(lambda: len(seen) == 3)
    await c.stop()
    assert seen == [8, 9, 10]
    # Same durable, other start settings: binds to the existing consumer and its position.
    await publisher.publish(event(10))
    again = consumer(nats_client, handler, deliver_policy="all")
    await again.start()
    await wait_until(lambda: len(seen) == 4)
    await again.stop()
    assert seen[-1] == 11
