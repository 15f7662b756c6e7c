"""Validation before storage: schemas from the registry bucket, streams, sizes, PII masking."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from backbone.schemas import SchemaStore
from event_gateway.pii import PiiPolicy, iban_ok, luhn_ok, scan_data, scan_text
from event_gateway.testing import auth, gateway_settings, running_gateway, stored_events

SCHEMA = {
    "type": "object",
    "required": ["error", "severity"],
    "properties": {
        "error": {"type": "string"},
        "severity": {"type": "number", "minimum": 0, "maximum": 1},
        "contact": {"type": "string"},
    },
}


def headers(event_id: str, event_type: str = "mcp.server.error") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "ce-source": "/claude/mcp/filesystem",
        "ce-id": event_id,
        "content-type": "application/json",
        **auth(),
    }


async def register(nats_client, event_type: str, schema: dict) -> None:
    store = await SchemaStore.open(nats_client.jetstream())
    await store.register(event_type, schema)


async def wait_for_schema(app, event_type: str) -> None:
    cache = app.state.runtime.service.schemas
    async with asyncio.timeout(10):
        while cache.get(event_type) is None:
            await asyncio.sleep(0.02)


async def test_data_is_validated_against_the_registered_schema_naming_the_path(
    nats_server, streams
):
    await register(streams, "mcp.server.error", SCHEMA)
    async with running_gateway(gateway_settings(nats_server.url)) as (client, app):
        await wait_for_schema(app, "mcp.server.error")
        ok = {"error": "Connection timeout", "severity": 0.8}
        resp = await client.post("/v1/events", content=orjson.dumps(ok), headers=headers("v1"))
        assert resp.status_code == 202, resp.text
        bad = {"error": "Connection timeout", "severity": 7}
        resp = await client.post("/v1/events", content=orjson.dumps(bad), headers=headers("v2"))
        assert resp.status_code == 422
        problem = resp.json()
        assert problem["path"] == "$.severity"
        assert problem["reason"] == "schema"
        assert problem["event_id"] == "v2"
        # A type below a registered family is validated against the family's schema.
        resp = await client.post(
            "/v1/events", content=b'{"error": 1}', headers=headers("v3", "mcp.server.error.fs")
        )
        assert resp.status_code == 422
    assert [e.id for _, e in await stored_events(streams, "MCP_EVENTS")] == ["v1"]


async def test_types_without_schema_follow_the_unknown_type_policy(nats_server, streams):
    settings = gateway_settings(nats_server.url, unknown_types={"mcp": "reject"})
    async with running_gateway(settings) as (client, _):
        resp = await client.post("/v1/events", content=b"{}", headers=headers("u1"))
        assert resp.status_code == 422
        assert resp.json()["reason"] == "no-schema"
        resp = await client.post("/v1/events", content=b"{}", headers=headers("u2", "claude.x"))
        assert resp.status_code == 202


async def test_type_no_stream_captures_is_422_and_invalid_subject_type_is_400(gateway):
    client, _ = gateway
    resp = await client.post("/v1/events", content=b"{}", headers=headers("n1", "orphan.event"))
    assert resp.status_code == 422
    assert resp.json()["attribute"] == "type"
    resp = await client.post("/v1/events", content=b"{}", headers=headers("n2", "mcp.*"))
    assert resp.status_code == 400
    assert resp.json()["attribute"] == "type"


async def test_oversized_event_is_413_before_anything_is_stored(nats_server, streams):
    settings = gateway_settings(nats_server.url, max_event_bytes=2048)
    async with running_gateway(settings) as (client, _):
        big = orjson.dumps({"blob": "x" * 4096})
        resp = await client.post("/v1/events", content=big, headers=headers("big"))
        assert resp.status_code == 413
        # Attributes count too: a huge header cannot smuggle a big event in.
        resp = await client.post(
            "/v1/events", content=b"{}", headers={**headers("big2"), "ce-note": "y" * 4096}
        )
        assert resp.status_code == 413
    assert await stored_events(streams, "MCP_EVENTS") == []


async def test_batch_over_the_event_limit_is_413(nats_server, streams):
    settings = gateway_settings(nats_server.url, max_batch_events=3)
    async with running_gateway(settings) as (client, _):
        batch = [
            {"specversion": "1.0", "id": str(i), "source": "/s", "type": "mcp.b"} for i in range(4)
        ]
        resp = await client.post(
            "/v1/events",
            content=orjson.dumps(batch),
            headers={"content-type": "application/cloudevents-batch+json", **auth()},
        )
        assert resp.status_code == 413


# -- PII ------------------------------------------------------------------------------------


def test_luhn_and_iban_checks():
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00")
    assert iban_ok("GB82WEST12345698765432")
    assert not iban_ok("GB82WEST12345698765433")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("mail me at jane.doe+x@example.co.uk please", "email"),
        ("card 4111 1111 1111 1111 exp 12/29", "card"),
        ("card 4111-1111-1111-1111", "card"),
        ("IBAN DE89 3704 0044 0532 0130 00", "iban"),
        ("call +49 30 1234567", "phone"),
        ("call (555) 123-4567", "phone"),
        ("from 192.168.10.4 to", "ip"),
        ("v6 2001:db8::8a2e:370:7334", "ip"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "secret"),
        ("key ghp_abcdefghijklmnopqrstuvwxyz0123456789", "secret"),
        ("aws AKIAIOSFODNN7EXAMPLE", "secret"),
    ],
)
def test_pii_kinds_are_found_and_masked(text, kind):
    masked, counts = scan_text(text, mask=True)
    assert counts == {kind: 1}, counts
    assert f"[REDACTED:{kind}]" in masked


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112 (fails Luhn)",
        "version 1.2.3.4.5",
        "at 10:30:00 today",
        "no digits here",
        "GB82WEST12345698765433",
        "build 2024-05-01",
        "ratio 0.8",
    ],
)
def test_things_that_only_look_like_pii_are_left_alone(text):
    masked, counts = scan_text(text, mask=True)
    assert counts == {}
    assert masked == text


def test_scan_walks_nested_values_and_counts_fields():
    data = {"a": ["x@y.io", {"b": "ok", "c": "4111111111111111 and z@w.org"}], "n": 5}
    result = scan_data(data, mask=True)
    assert result.fields == 2
    assert result.kinds == {"email": 2, "card": 1}
    assert result.data["a"][0] == "[REDACTED:email]"
    assert result.data["n"] == 5
    detect = scan_data(data, mask=False)
    assert detect.data == data
    assert detect.fields == 2


def test_policy_longest_prefix_wins():
    policy = PiiPolicy({"github": "mask", "github.push": "off", "*": "detect"})
    assert policy.mode_for("github.issues.opened") == "mask"
    assert policy.mode_for("github.push") == "off"
    assert policy.mode_for("mcp.x") == "detect"
    assert PiiPolicy({}).mode_for("x") == "off"


async def test_pii_is_masked_before_storage_and_counted_on_the_event(nats_server, streams):
    settings = gateway_settings(
        nats_server.url, pii={"policy": {"mcp": "mask", "claude": "detect"}}
    )
    async with running_gateway(settings) as (client, _):
        data = {"error": "user bob@example.com", "ip": "10.1.2.3", "severity": 0.5, "ok": "fine"}
        resp = await client.post("/v1/events", content=orjson.dumps(data), headers=headers("p1"))
        assert resp.status_code == 202, resp.text
        resp = await client.post(
            "/v1/events", content=orjson.dumps(data), headers=headers("p2", "claude.note")
        )
        assert resp.status_code == 202, resp.text
        metrics = (await client.get("/metrics")).text
        assert 'backbone_gateway_pii_fields_total{mode="mask"} 2.0' in metrics
    [(_, masked)] = await stored_events(streams, "MCP_EVENTS")
    assert masked.data == {
        "error": "user [REDACTED:email]",
        "ip": "[REDACTED:ip]",
        "severity": 0.5,
        "ok": "fine",
    }
    assert masked.extensions["piimasked"] == "2"
    [(_, detected)] = await stored_events(streams, "CLAUDE_EVENTS")
    assert detected.data == data
    assert detected.extensions["piidetected"] == "2"


async def test_masking_that_breaks_the_schema_is_refused_not_stored(nats_server, streams):
    schema = {"type": "object", "properties": {"contact": {"type": "string", "pattern": "@"}}}
    await register(streams, "mcp.contact", schema)
    settings = gateway_settings(nats_server.url, pii={"policy": {"mcp": "mask"}})
    async with running_gateway(settings) as (client, app):
        await wait_for_schema(app, "mcp.contact")
        resp = await client.post(
            "/v1/events",
            content=b'{"contact": "a@b.io"}',
            headers=headers("m1", "mcp.contact"),
        )
        assert resp.status_code == 422
        assert "PII masking" in resp.json()["detail"]
    assert await stored_events(streams, "MCP_EVENTS") == []


async def test_event_grown_past_the_stream_limit_by_masking_is_413_and_breaker_stays_closed(
    nats_server, streams
):
    settings = gateway_settings(
        nats_server.url, max_event_bytes=1_000_000, pii={"policy": {"mcp": "mask"}}
    )
    async with running_gateway(settings) as (client, app):
        # 7-byte IPs become 13-byte placeholders: ~0.6 MB of data grows past the 1 MiB limit.
        data = orjson.dumps({"log": " ".join(["1.1.1.1"] * 80_000)})
        resp = await client.post("/v1/events", content=data, headers=headers("huge"))
        assert resp.status_code == 413, resp.text
        assert app.state.runtime.service.breaker.state == "CLOSED"
        assert app.state.runtime.service.breaker.failed_calls == 0
    assert await stored_events(streams, "MCP_EVENTS") == []
