"""The JetStream publish wire: nats-py's bytes without nats-py's per-call cost."""

import asyncio

import nats.errors
import nats.js.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js.api import StreamConfig

from backbone.messaging import JetStreamSender, _jetstream, encode_headers, sender_for


async def ignore(_msg):
    """A responder that never answers."""


async def nats_py_header_block(headers):
    """The header block nats-py's own publish writes for ``headers`` (captured, not sent)."""
    client = Client()
    commands = []

    async def capture(cmd, priority=False):
        commands.append(cmd)

    client._send_command = capture
    await client._send_publish("s", "r", b"x", 1, headers)
    line, rest = commands[0].split(b"\r\n", 1)
    header_size = int(line.split(b" ")[3])
    return rest[:header_size]


def nats_py_encoding(headers):
    try:
        return asyncio.run(nats_py_header_block(headers))
    except nats.errors.BadHeaderError as exc:
        return ("BadHeaderError", str(exc))


def ours(headers):
    try:
        return encode_headers(headers)
    except nats.errors.BadHeaderError as exc:
        return ("BadHeaderError", str(exc))


TYPICAL = {
    "ce-specversion": "1.0",
    "ce-id": "A234-1234-1234",
    "ce-source": "/claude/mcp/filesystem",
    "ce-type": "mcp.server.error",
    "ce-time": "2026-11-27T12:00:00.123456Z",
    "ce-traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "Content-Type": "application/json; charset=utf-8",
    "Nats-Msg-Id": "e12f8660169f0994722fd5dfde226dc8",
    "Nats-Expected-Stream": "WIRE",
}


@pytest.mark.parametrize(
    "headers",
    [
        TYPICAL,
        {},
        {"a": ""},
        {" padded ": "  value  "},
        {"x": "line\r\nbreak", "y": "tab\tinside"},
        {"x": "caf\u00e9", "y": "\u2003wide space\u2003"},
        {"": "skipped", "k": "v"},
        {"bad key": "v"},
        {"k:colon": "v"},
    ],
)
def test_header_block_is_byte_for_byte_what_nats_py_sends(headers):
    assert ours(headers) == nats_py_encoding(headers)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=24), max_size=6))
def test_header_block_matches_nats_py_for_any_headers(headers):
    assert ours(headers) == nats_py_encoding(headers)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC-_.0123456789", min_size=1, max_size=12),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
        max_size=8,
    )
)
def test_header_block_matches_nats_py_for_printable_headers(headers):
    assert ours(headers) == nats_py_encoding(headers)


@pytest.fixture
async def js(nats_client):
    js = nats_client.jetstream()
    await js.add_stream(StreamConfig(name="WIRE", subjects=["wire.>"], duplicate_window=60))
    return js


async def stored(js, seq):
    msg = await js.get_msg("WIRE", seq)
    return msg.headers, msg.data


async def test_sender_stores_what_nats_py_stores_and_reports_the_ack(nats_client, js):
    sender = sender_for(nats_client)
    assert sender.fast, "the pinned nats-py has the internals the wire writes through"
    assert sender_for(nats_client) is sender  # one inbox per connection
    ours_ack = await sender.publish("wire.a", b'{"n": 1}', {**TYPICAL, "Nats-Msg-Id": "one"})
    theirs_ack = await js.publish("wire.a", b'{"n": 1}', headers={**TYPICAL, "Nats-Msg-Id": "two"})
    assert (ours_ack.stream, ours_ack.seq, ours_ack.duplicate) == ("WIRE", 1, None)
    assert theirs_ack.seq == 2
    ours_headers, ours_data = await stored(js, 1)
    theirs_headers, theirs_data = await stored(js, 2)
    assert ours_data == theirs_data == b'{"n": 1}'
    assert {**ours_headers, "Nats-Msg-Id": "x"} == {**theirs_headers, "Nats-Msg-Id": "x"}
    again = await sender.publish("wire.a", b"other", {"Nats-Msg-Id": "one"})
    assert (again.seq, again.duplicate) == (1, True)


async def test_sender_raises_nats_py_errors(nats_client, js):
    sender = sender_for(nats_client)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await sender.publish("nowhere.a", b"x", {"k": "v"}, timeout_s=2)
    with pytest.raises(nats.js.errors.APIError) as info:
        await sender.publish("wire.a", b"x", {"Nats-Expected-Stream": "OTHER"})
    assert info.value.err_code == 10060
    # A responder that never answers: the request times out.
    await nats_client.subscribe("silent.a", cb=ignore)
    with pytest.raises(nats.errors.TimeoutError):
        await sender.publish("silent.a", b"x", {"k": "v"}, timeout_s=0.2)
    assert not sender._waiting
    with pytest.raises(nats.errors.BadHeaderError):
        await sender.publish("wire.a", b"x", {"bad key": "v"})


async def test_publish_async_pipelines_in_order(nats_client, js):
    sender = sender_for(nats_client)
    futures = [
        await sender.publish_async("wire.p", b"%d" % i, {"Nats-Msg-Id": f"p{i}"})
        for i in range(2000)
    ]
    acks = await asyncio.gather(*futures)
    assert [a.seq for a in acks] == list(range(1, 2001))
    # Replies are settled as nats-py's reader hands them over: nothing counts as pending.
    assert sender._sub._pending_size == 0
    assert sender._sub.pending_msgs == 0


async def test_given_up_futures_are_swept(nats_client, js, monkeypatch):
    monkeypatch.setattr(_jetstream, "_SWEEP_AT", 10)
    sender = JetStreamSender(nats_client)
    await nats_client.subscribe("silent.b", cb=ignore)
    for _ in range(30):
        future = await sender.publish_async("silent.b", b"x", {"k": "v"})
        future.cancel()
    assert len(sender._waiting) <= 10


async def test_fallback_without_the_internals_uses_nats_py(nats_client, js, monkeypatch):
    monkeypatch.setattr(_jetstream, "_REQUIRED_INTERNALS", ("_no_such_attribute",))
    sender = JetStreamSender(nats_client)
    assert not sender.fast
    ack = await sender.publish("wire.f", b"x", {"Nats-Msg-Id": "f1"})
    future = await sender.publish_async("wire.f", b"y", {"Nats-Msg-Id": "f2"})
    assert (ack.seq, (await future).seq) == (1, 2)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await sender.publish("nowhere.b", b"x", {"k": "v"}, timeout_s=2)


async def test_callback_replies_when_the_subscription_internals_are_missing(
    nats_client, js, monkeypatch
):
    monkeypatch.setattr(_jetstream, "_SUBSCRIPTION_INTERNALS", ("_no_such_attribute",))
    sender = JetStreamSender(nats_client)
    assert sender.fast
    ack = await sender.publish("wire.c", b"x", {"Nats-Msg-Id": "c1"})
    future = await sender.publish_async("wire.c", b"y", {"Nats-Msg-Id": "c2"})
    assert (ack.seq, (await future).seq) == (1, 2)
    assert not isinstance(sender._sub._pending_queue, _jetstream._Replies)
