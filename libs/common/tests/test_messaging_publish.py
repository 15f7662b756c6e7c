from pathlib import Path

import pytest

from backbone.errors import EventError, MessageTooLargeError, NoStreamForSubjectError, PublishError
from backbone.events import CloudEvent, decode_nats
from backbone.messaging import (
    MSG_ID_HEADER,
    Publisher,
    apply_streams,
    is_subject_pattern,
    load_catalog,
    subject_for,
    subject_matches,
)

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"


@pytest.fixture
def catalog():
    return load_catalog(STREAMS)


@pytest.fixture
async def publisher(nats_client, catalog):
    await apply_streams(nats_client.jetstream(), catalog)
    return Publisher(nats_client, catalog=catalog, timeout_s=2.0)


def event(**overrides):
    base = {"type": "mcp.server.error", "source": "/claude/mcp/filesystem", "data": {"error": "x"}}
    return CloudEvent.create(**{**base, **overrides})


def test_subject_is_the_event_type_and_bad_types_are_refused():
    assert subject_for("mcp.server.error") == "mcp.server.error"
    for bad in ("mcp server", "mcp.*", "mcp.>", "mcp..x", ""):
        with pytest.raises(EventError) as info:
            subject_for(bad)
        assert info.value.attribute == "type"


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("mcp.>", "mcp.server.error", True),
        ("mcp.>", "mcp", False),
        ("mcp.*", "mcp.server", True),
        ("mcp.*", "mcp.server.error", False),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
    ],
)
def test_subject_matching_follows_nats_wildcards(pattern, subject, matches):
    assert subject_matches(pattern, subject) is matches


def test_streams_file_declares_the_seed_streams(catalog):
    names = {s.name: s for s in catalog.streams}
    assert names["CLAUDE_EVENTS"].max_msgs == 100_000
    assert names["CLAUDE_EVENTS"].max_age_s == 7 * 86400
    assert names["CLAUDE_EVENTS"].duplicate_window_s == 120
    assert names["MCP_EVENTS"].max_msgs == 50_000
    assert names["SYSTEM_EVENTS"].max_msgs == 1_000_000
    assert names["AI_EVENTS"].max_age_s == 90 * 86400
    assert names["DLQ"].discard == "new"
    assert all(s.storage == "file" for s in catalog.streams)
    assert catalog.stream_for("claude.session.start").name == "CLAUDE_EVENTS"


async def test_apply_streams_is_idempotent_and_reports_updates(nats_client, catalog):
    js = nats_client.jetstream()
    first = await apply_streams(js, catalog)
    assert {c.action for c in first} == {"created"}
    second = await apply_streams(js, catalog)
    assert {c.action for c in second} == {"unchanged"}
    changed = catalog.streams[0].model_copy(update={"max_msgs": 123})
    third = await apply_streams(js, type(catalog)(streams=(changed,)))
    assert third[0].action == "updated"
    assert third[0].diff["max_msgs"] == (100_000, 123)


async def test_publish_reports_stream_and_seq_after_ack(publisher, nats_client):
    result = await publisher.publish(event(id="e-1"))
    assert (result.stream, result.seq, result.duplicate) == ("MCP_EVENTS", 1, False)
    stored = await nats_client.jetstream().get_msg("MCP_EVENTS", 1)
    assert decode_nats(stored.headers, stored.data).id == "e-1"
    assert stored.headers[MSG_ID_HEADER]


async def test_same_source_and_id_twice_is_one_stored_message(publisher, nats_client):
    first = await publisher.publish(event(id="dup"))
    second = await publisher.publish(event(id="dup", data={"other": True}))
    assert second.duplicate is True
    assert second.seq == first.seq
    info = await nats_client.jetstream().stream_info("MCP_EVENTS")
    assert info.state.messages == 1


async def test_same_id_from_another_source_is_not_a_duplicate(publisher):
    await publisher.publish(event(id="same"))
    other = await publisher.publish(event(id="same", source="/other"))
    assert other.duplicate is False


async def test_event_without_a_stream_is_refused_not_dropped(publisher):
    with pytest.raises(NoStreamForSubjectError) as info:
        await publisher.publish(event(type="nobody.listens"))
    assert info.value.subject == "nobody.listens"


async def test_structured_mode_round_trips(nats_client, catalog):
    await apply_streams(nats_client.jetstream(), catalog)
    publisher = Publisher(nats_client, catalog=catalog, mode="structured")
    result = await publisher.publish(event(id="s-1"))
    stored = await nats_client.jetstream().get_msg(result.stream, result.seq)
    assert stored.headers["Content-Type"].startswith("application/cloudevents+json")
    assert decode_nats(stored.headers, stored.data).id == "s-1"


async def test_publish_many_keeps_order_and_reports_each_event(publisher, nats_client):
    events = [event(id=f"m-{i}") for i in range(500)]
    events.insert(10, event(type="nobody.listens", id="bad"))
    results = await publisher.publish_many(events, window=64)
    assert isinstance(results[10], NoStreamForSubjectError)
    good = [r for r in results if not isinstance(r, Exception)]
    assert len(good) == 500
    assert [r.seq for r in good] == list(range(1, 501))
    assert [r.id for r in good] == [f"m-{i}" for i in range(500)]


async def test_oversized_event_is_a_publish_error(publisher):
    with pytest.raises(PublishError):
        await publisher.publish(event(data={"blob": "x" * 2_000_000}))


async def test_jetstream_size_refusal_is_a_message_too_large_error(nats_client, catalog):
    # The stream allows less than the catalog says: the server's refusal gets the same type as
    # the publisher's own size check.
    js = nats_client.jetstream()
    await apply_streams(js, catalog)
    info = await js.stream_info("MCP_EVENTS")
    info.config.max_msg_size = 512
    await js.update_stream(info.config)
    publisher = Publisher(nats_client, catalog=catalog, timeout_s=2.0)
    with pytest.raises(MessageTooLargeError):
        await publisher.publish(event(data={"blob": "x" * 2000}))


def test_tail_patterns_resolve_to_the_one_stream_that_covers_them(catalog):
    assert [s.name for s in catalog.streams_covering("mcp.>")] == ["MCP_EVENTS"]
    assert [s.name for s in catalog.streams_covering("mcp.server.*")] == ["MCP_EVENTS"]
    assert [s.name for s in catalog.streams_covering("github.push")] == ["WEBHOOK_EVENTS"]
    assert catalog.streams_covering(">") == []
    assert is_subject_pattern("a.*.>")
    assert not is_subject_pattern("a.>.b")
    assert not is_subject_pattern("a..b")
