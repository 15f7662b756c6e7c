"""Conformance with the CloudEvents HTTP binding: binary, structured and batched content modes."""

from __future__ import annotations

import base64

import orjson

from event_gateway.testing import API_KEY, MCP_KEY, auth, stored_events

BINARY_HEADERS = {
    "ce-specversion": "1.0",
    "ce-type": "mcp.server.error",
    "ce-source": "/claude/mcp/filesystem",
    "ce-id": "A234-1234-1234",
    "content-type": "application/json",
}


def without_trace(attributes):
    return {k: v for k, v in attributes.items() if k not in {"traceparent", "tracestate"}}


def structured(**overrides):
    event = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/claude/session",
        "type": "claude.session.started",
        "datacontenttype": "application/json",
        "data": {"user": "u1"},
    }
    event.update(overrides)
    return event


async def test_binary_event_is_stored_and_acknowledged_with_stream_and_seq(gateway, streams):
    client, _ = gateway
    body = b'{"error": "Connection timeout", "severity": 0.8}'
    resp = await client.post("/v1/events", content=body, headers={**BINARY_HEADERS, **auth()})
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer == {
        "id": "A234-1234-1234",
        "subject": "mcp.server.error",
        "stream": "MCP_EVENTS",
        "seq": 1,
        "duplicate": False,
    }
    assert len(resp.headers["x-trace-id"]) == 32
    [(seq, event)] = await stored_events(streams, "MCP_EVENTS")
    assert seq == 1
    assert event.type == "mcp.server.error"
    assert event.source == "/claude/mcp/filesystem"
    assert event.datacontenttype == "application/json"
    assert event.data == {"error": "Connection timeout", "severity": 0.8}


async def test_binary_percent_encoded_headers_are_decoded(gateway, streams):
    client, _ = gateway
    headers = {
        **BINARY_HEADERS,
        "ce-id": "pct-1",
        "ce-subject": "Euro%20%E2%82%AC%20%f0%9f%98%80",  # lower-case hex must be accepted
        "ce-source": "/caf%25C3%25A9",  # one round of decoding only: stays percent-encoded
        "ce-comment": '"quoted value"',  # RFC 7230 quoted-string, older senders
        **auth(),
    }
    resp = await client.post("/v1/events", content=b"{}", headers=headers)
    assert resp.status_code == 202, resp.text
    [(_, event)] = await stored_events(streams, "MCP_EVENTS")
    assert event.subject == "Euro € 😀"
    assert event.source == "/caf%C3%A9"
    assert event.extensions["comment"] == "quoted value"


async def test_binary_invalid_utf8_percent_encoding_is_rejected_naming_the_attribute(gateway):
    client, _ = gateway
    headers = {**BINARY_HEADERS, "ce-subject": "%C0%A0", **auth()}
    resp = await client.post("/v1/events", content=b"{}", headers=headers)
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["attribute"] == "subject"


async def test_unknown_extensions_pass_through_in_binary_and_structured_mode(gateway, streams):
    client, _ = gateway
    headers = {**BINARY_HEADERS, "ce-id": "ext-1", "ce-tenant": "acme", "ce-priority": "5"}
    resp = await client.post("/v1/events", content=b"{}", headers={**headers, **auth()})
    assert resp.status_code == 202, resp.text
    body = orjson.dumps(structured(id="ext-2", type="mcp.tool.called", tenant="acme", retries=3))
    resp = await client.post(
        "/v1/events",
        content=body,
        headers={"content-type": "application/cloudevents+json", **auth()},
    )
    assert resp.status_code == 202, resp.text
    events = [event for _, event in await stored_events(streams, "MCP_EVENTS")]
    # The gateway adds the distributed-tracing extension (its publish span) when it is absent.
    assert all(event.traceparent is not None for event in events)
    assert without_trace(events[0].extensions) == {"tenant": "acme", "priority": "5"}
    # Stored in NATS binary mode, where every attribute travels as its canonical string.
    assert without_trace(events[1].extensions) == {"tenant": "acme", "retries": "3"}


async def test_binary_without_content_type_keeps_opaque_bytes(gateway, streams):
    client, _ = gateway
    headers = {k: v for k, v in BINARY_HEADERS.items() if k != "content-type"}
    resp = await client.post(
        "/v1/events", content=b"\x00\x01raw", headers={**headers, "ce-id": "raw", **auth()}
    )
    assert resp.status_code == 202, resp.text
    [(_, event)] = await stored_events(streams, "MCP_EVENTS")
    assert event.data == b"\x00\x01raw"


async def test_binary_ce_datacontenttype_header_is_refused(gateway):
    client, _ = gateway
    headers = {**BINARY_HEADERS, "ce-datacontenttype": "application/json", **auth()}
    resp = await client.post("/v1/events", content=b"{}", headers=headers)
    assert resp.status_code == 400
    assert resp.json()["attribute"] == "datacontenttype"


async def test_binary_duplicate_ce_header_is_refused(gateway):
    client, _ = gateway
    headers = [(k, v) for k, v in {**BINARY_HEADERS, **auth()}.items()]
    headers.append(("ce-id", "other"))
    resp = await client.post("/v1/events", content=b"{}", headers=headers)
    assert resp.status_code == 400
    assert resp.json()["attribute"] == "id"


async def test_missing_required_attribute_names_it(gateway):
    client, _ = gateway
    for missing in ("ce-specversion", "ce-id", "ce-source", "ce-type"):
        headers = {k: v for k, v in BINARY_HEADERS.items() if k != missing}
        resp = await client.post("/v1/events", content=b"{}", headers={**headers, **auth()})
        assert resp.status_code == 400, (missing, resp.text)
        assert resp.json()["attribute"] == missing[3:]


async def test_json_body_that_is_not_json_is_refused(gateway):
    client, _ = gateway
    resp = await client.post("/v1/events", content=b"{nope", headers={**BINARY_HEADERS, **auth()})
    assert resp.status_code == 400
    assert resp.json()["attribute"] == "data"


async def test_structured_event_is_stored_with_all_attributes(gateway, streams):
    client, _ = gateway
    sent = structured(
        subject="sess-9", time="2024-05-01T12:00:00Z", dataschema="https://example.com/s.json"
    )
    resp = await client.post(
        "/v1/events",
        content=orjson.dumps(sent),
        headers={"content-type": "application/cloudevents+json; charset=utf-8", **auth()},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["stream"] == "CLAUDE_EVENTS"
    [(_, event)] = await stored_events(streams, "CLAUDE_EVENTS")
    assert without_trace(event.to_dict()) == sent


async def test_structured_base64_data_round_trips(gateway, streams):
    client, _ = gateway
    sent = structured(datacontenttype="application/octet-stream", data=None)
    del sent["data"]
    sent["data_base64"] = base64.b64encode(b"\xff\x00binary").decode()
    resp = await client.post(
        "/v1/events",
        content=orjson.dumps(sent),
        headers={"content-type": "application/cloudevents+json", **auth()},
    )
    assert resp.status_code == 202, resp.text
    [(_, event)] = await stored_events(streams, "CLAUDE_EVENTS")
    assert event.data == b"\xff\x00binary"


async def test_unsupported_event_format_is_415(gateway):
    client, _ = gateway
    for content_type in ("application/cloudevents+avro", "application/cloudevents-batch+xml"):
        resp = await client.post(
            "/v1/events", content=b"x", headers={"content-type": content_type, **auth()}
        )
        assert resp.status_code == 415, content_type
        assert resp.json()["attribute"] == "content-type"


async def test_plain_body_without_ce_headers_is_415(gateway):
    client, _ = gateway
    resp = await client.post("/v1/events", json={"a": 1}, headers=auth())
    assert resp.status_code == 415


async def test_batch_all_accepted_is_202_with_results_in_order(gateway, streams):
    client, _ = gateway
    batch = [structured(id=f"b-{i}", type="mcp.batch.item", data={"i": i}) for i in range(5)]
    resp = await client.post(
        "/v1/events",
        content=orjson.dumps(batch),
        headers={"content-type": "application/cloudevents-batch+json", **auth()},
    )
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["accepted"] == 5
    assert answer["rejected"] == 0
    assert [r["index"] for r in answer["results"]] == list(range(5))
    assert [r["seq"] for r in answer["results"]] == [1, 2, 3, 4, 5]
    stored = [event.id for _, event in await stored_events(streams, "MCP_EVENTS")]
    assert stored == [f"b-{i}" for i in range(5)]


async def test_batch_partial_failure_is_207_with_a_problem_per_refused_event(gateway, streams):
    client, _ = gateway
    batch = [
        structured(id="ok-1", type="mcp.ok"),
        structured(id="bad-source", type="mcp.ok", source="not a uri"),
        "not an object",
        structured(id="no-stream", type="nowhere.event"),
        structured(id="ok-2", type="claude.ok"),
    ]
    resp = await client.post(
        "/v1/events",
        content=orjson.dumps(batch),
        headers={"content-type": "application/cloudevents-batch+json", **auth()},
    )
    assert resp.status_code == 207, resp.text
    answer = resp.json()
    assert answer["accepted"] == 2
    assert answer["rejected"] == 3
    statuses = [(r["index"], r["status"]) for r in answer["results"]]
    assert statuses == [(0, 202), (1, 400), (2, 400), (3, 422), (4, 202)]
    assert answer["results"][1]["problem"]["attribute"] == "source"
    assert answer["results"][1]["id"] == "bad-source"
    assert answer["results"][3]["problem"]["attribute"] == "type"
    assert [e.id for _, e in await stored_events(streams, "MCP_EVENTS")] == ["ok-1"]
    assert [e.id for _, e in await stored_events(streams, "CLAUDE_EVENTS")] == ["ok-2"]


async def test_batch_scope_is_checked_per_event(gateway, streams):
    client, _ = gateway
    batch = [structured(id="m", type="mcp.x"), structured(id="c", type="claude.x")]
    resp = await client.post(
        "/v1/events",
        content=orjson.dumps(batch),
        headers={"content-type": "application/cloudevents-batch+json", **auth(MCP_KEY)},
    )
    assert resp.status_code == 207
    assert [r["status"] for r in resp.json()["results"]] == [202, 403]


async def test_batch_that_is_not_an_array_is_one_problem(gateway):
    client, _ = gateway
    for body in (b"{}", b"[", b'"x"'):
        resp = await client.post(
            "/v1/events",
            content=body,
            headers={"content-type": "application/cloudevents-batch+json", **auth()},
        )
        assert resp.status_code == 400, body
        assert resp.headers["content-type"] == "application/problem+json"


async def test_empty_batch_is_accepted_with_no_results(gateway):
    client, _ = gateway
    resp = await client.post(
        "/v1/events",
        content=b"[]",
        headers={"content-type": "application/cloudevents-batch+json", **auth()},
    )
    assert resp.status_code == 202
    assert resp.json() == {"accepted": 0, "rejected": 0, "results": []}


async def test_same_source_and_id_twice_is_reported_duplicate_and_stored_once(gateway, streams):
    client, _ = gateway
    for expected in (False, True):
        resp = await client.post(
            "/v1/events", content=b"{}", headers={**BINARY_HEADERS, **auth(API_KEY)}
        )
        assert resp.status_code == 202
        assert resp.json()["duplicate"] is expected
    assert len(await stored_events(streams, "MCP_EVENTS")) == 1


async def test_unknown_route_and_wrong_method_are_problem_documents(gateway):
    client, _ = gateway
    resp = await client.get("/nope")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    resp = await client.get("/v1/events")
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "application/problem+json"


async def test_openapi_document_is_served_as_yaml_and_json(gateway):
    client, _ = gateway
    resp = await client.get("/openapi.yaml")
    assert resp.status_code == 200
    assert resp.text.startswith("openapi: 3.")
    doc = (await client.get("/openapi.json")).json()
    assert "/v1/events" in doc["paths"]
