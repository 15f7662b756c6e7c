"""Hypothesis fuzzing: never a 5xx for bad input, never a stored event that fails validation."""

from __future__ import annotations

import asyncio

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbone.schemas import SchemaStore
from event_gateway.testing import auth, stored_events

SCHEMA = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}
STREAMS = ("MCP_EVENTS", "CLAUDE_EVENTS", "WEBHOOK_EVENTS")

# Header values as a client could send them: latin-1 without control characters, often with
# percent-escapes (valid or not) and quotes.
header_text = st.one_of(
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=40,
    ),
    st.lists(
        st.sampled_from(
            ["%", "%2", "%20", "%C3%A9", "%C0%A0", "%ff", '"', "\\", "a", ".", "/", "1.0"]
        ),
        max_size=8,
    ).map("".join),
)
types = st.sampled_from(
    ["mcp.fuzz", "mcp.fuzz.sub", "mcp.other", "claude.x", "nowhere.x", "mcp.*", "mcp..x", "", " "]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(orjson.dumps),
    st.fixed_dictionaries({"n": st.integers(-5, 5)}).map(orjson.dumps),
)
binary_headers = st.fixed_dictionaries(
    {
        "ce-specversion": st.sampled_from(["1.0", "0.3", "", "1.0 "]),
        "ce-id": header_text,
        "ce-source": st.sampled_from(["/fuzz", "https://x.io/a", "a b", "%2Ffuzz"]) | header_text,
        "ce-type": types,
        "content-type": st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/octet-stream",
                "bogus",
                "application/json; charset=utf-8",
            ]
        ),
    },
    optional={
        "ce-subject": header_text,
        "ce-time": st.sampled_from(["2024-05-01T12:00:00Z", "2024-13-01T00:00:00Z", "yesterday"]),
        "ce-dataschema": st.sampled_from(
            ["https://x.io/s", "not a uri", "backbone://schemas/mcp.fuzz/9"]
        ),
        "ce-Traceparent": st.sampled_from(["00-" + "a" * 32 + "-" + "b" * 16 + "-01", "garbage"]),
        "ce-x": header_text,
        "ce-UPPER": header_text,
        "ce-": header_text,
        "ce-datacontenttype": st.just("application/json"),
    },
)
structured_events = st.fixed_dictionaries(
    {
        "specversion": st.sampled_from(["1.0", "1.0", 1, None]),
        "id": st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1),
        "source": st.sampled_from(["/fuzz", "", "a b", "https://x.io"]),
        "type": types,
    },
    optional={
        "data": json_values | st.fixed_dictionaries({"n": st.integers(-5, 5)}),
        "data_base64": st.sampled_from(["AAEC", "!!", ""]),
        "datacontenttype": st.sampled_from(["application/json", "text/plain", "nope"]),
        "time": st.sampled_from(["2024-05-01T12:00:00Z", "x", 5]),
        "ext": json_values,
        "BadName": st.just("x"),
    },
)
structured_bodies = st.one_of(
    structured_events.map(orjson.dumps),
    st.sampled_from(
        [b'{"id": 1e999}', b"[" * 2000, b'{"specversion": "1.0", "id": 99999999999999999999999}']
    ),
    st.lists(structured_events, max_size=4).map(orjson.dumps),
    st.binary(max_size=40),
)
# Mostly-valid events, so that plenty get stored and the audit below has something to check.
plausible_headers = st.fixed_dictionaries(
    {
        "ce-specversion": st.just("1.0"),
        "ce-id": st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
        ),
        "ce-source": st.just("/fuzz"),
        "ce-type": st.sampled_from(["mcp.fuzz", "mcp.fuzz.sub", "claude.x"]),
        "content-type": st.just("application/json"),
    },
    optional={"ce-subject": header_text, "ce-x": header_text},
)
requests = st.one_of(
    st.tuples(st.just("binary"), binary_headers, bodies),
    st.tuples(st.just("binary"), plausible_headers, bodies),
    st.tuples(
        st.just("structured"),
        st.sampled_from(
            [
                {"content-type": "application/cloudevents+json"},
                {"content-type": "application/cloudevents-batch+json"},
                {"content-type": "application/cloudevents+xml"},
            ]
        ),
        structured_bodies,
    ),
)


def encoded(headers: dict[str, str]) -> dict[str, bytes]:
    # Raw bytes on the wire: non-ASCII arrives as UTF-8 (what careless senders do).
    return {name: value.encode("utf-8") for name, value in {**headers, **auth()}.items()}


async def _register(nats_client) -> None:
    store = await SchemaStore.open(nats_client.jetstream())
    await store.register("mcp.fuzz", SCHEMA)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
async def test_fuzzed_requests_never_cause_a_server_error(gateway, streams, request):
    client, app = gateway
    cache = app.state.runtime.service.schemas
    if cache.get("mcp.fuzz") is None:
        await _register(streams)
        async with asyncio.timeout(10):
            while cache.get("mcp.fuzz") is None:
                await asyncio.sleep(0.02)
    _mode, headers, body = request
    resp = await client.post("/v1/events", content=body, headers=encoded(headers))
    assert resp.status_code < 500 or resp.status_code == 503, resp.text
    assert resp.status_code != 503 or "retry-after" in resp.headers
    if resp.status_code >= 400:
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == resp.status_code


async def test_nothing_stored_by_fuzzing_breaks_the_spec_or_its_schema(gateway, streams):
    # Runs the same generator deterministically, then audits every stored message.
    client, app = gateway
    await _register(streams)
    cache = app.state.runtime.service.schemas
    async with asyncio.timeout(10):
        while cache.get("mcp.fuzz") is None:
            await asyncio.sleep(0.02)
    accepted = 0

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(request=requests)
    def generate(request):
        generated.append(request)

    generated: list = []
    generate()
    for _mode, headers, body in generated:
        resp = await client.post("/v1/events", content=body, headers=encoded(headers))
        assert resp.status_code < 500 or resp.status_code == 503
        if resp.status_code == 202 and resp.json().get("duplicate") is False:
            accepted += 1
    audited = 0
    for stream in STREAMS:
        for _seq, event in await stored_events(streams, stream):  # decode_nats re-checks the spec
            audited += 1
            cache.validate(event)  # raises if the stored data breaks its schema
            if event.type.startswith("mcp.fuzz"):
                assert isinstance(event.data, dict)
                assert event.data["n"] >= 0
    assert accepted > 0
    assert audited >= accepted
