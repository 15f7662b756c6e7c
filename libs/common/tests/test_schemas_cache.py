"""SchemaCache: version selection, family fallback, unknown-type policy, and the live KV watch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backbone.events import CloudEvent
from backbone.schemas import (
    MissingSchemaError,
    SchemaCache,
    SchemaRecord,
    SchemaStore,
    SchemaValidationError,
    fingerprint,
    register_seed_schemas,
    schema_ref,
    schema_url,
)
from backbone.testing import eventually

SEVERITY_V1 = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "severity": {"type": "number", "maximum": 1}},
    "required": ["error"],
}
SEVERITY_V2 = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "severity": {"type": "number", "maximum": 10}},
    "required": ["error"],
}


def record(event_type: str, version: int, schema, *, deleted: bool = False) -> SchemaRecord:
    return SchemaRecord(event_type, version, schema, fingerprint(schema), "", deleted)


def event(event_type: str, data, **attrs) -> CloudEvent:
    return CloudEvent.create(type=event_type, source="/test", data=data, **attrs)


@pytest.fixture
def cache() -> SchemaCache:
    cache = SchemaCache(unknown_type_policy={"ai": "reject", "ai.experimental": "accept"})
    cache.apply(record("mcp.server.error", 1, SEVERITY_V1))
    cache.apply(record("mcp.server.error", 2, SEVERITY_V2))
    cache.apply(record("system.metrics", 1, {"type": "object", "required": ["service"]}))
    return cache


def test_latest_version_is_used_without_dataschema(cache: SchemaCache) -> None:
    cache.validate(event("mcp.server.error", {"error": "x", "severity": 5}))
    assert cache.validated == 1


def test_invalid_data_raises_with_json_path_and_schema_ref(cache: SchemaCache) -> None:
    with pytest.raises(SchemaValidationError) as caught:
        cache.validate(event("mcp.server.error", {"error": "x", "severity": "high"}))
    assert caught.value.path == "$.severity"
    assert caught.value.schema_ref == schema_ref("mcp.server.error", 2)
    assert caught.value.event_type == "mcp.server.error"
    assert cache.rejected == 1


def test_dataschema_selects_the_version(cache: SchemaCache) -> None:
    pinned = schema_ref("mcp.server.error", 1)
    with pytest.raises(SchemaValidationError) as caught:
        cache.validate(event("mcp.server.error", {"error": "x", "severity": 5}, dataschema=pinned))
    assert caught.value.schema_ref == pinned
    url = schema_url("https://registry.example", "mcp.server.error", 2)
    cache.validate(event("mcp.server.error", {"error": "x", "severity": 5}, dataschema=url))


def test_dataschema_naming_an_unknown_version_is_refused(cache: SchemaCache) -> None:
    with pytest.raises(MissingSchemaError):
        cache.validate(
            event("mcp.server.error", {"error": "x"}, dataschema=schema_ref("mcp.server.error", 7))
        )


def test_foreign_dataschema_falls_back_to_latest(cache: SchemaCache) -> None:
    foreign = "https://example.com/schemas/error.json"
    with pytest.raises(SchemaValidationError):
        cache.validate(event("mcp.server.error", {"severity": 1}, dataschema=foreign))


def test_family_schema_covers_longer_types(cache: SchemaCache) -> None:
    cache.validate(event("system.metrics.gateway", {"service": "gateway"}))
    with pytest.raises(SchemaValidationError) as caught:
        cache.validate(event("system.metrics.gateway", {"metrics": {}}))
    assert caught.value.schema_ref == schema_ref("system.metrics", 1)
    # An exact registration wins over the family.
    cache.apply(record("system.metrics.gateway", 1, {"type": "object"}))
    cache.validate(event("system.metrics.gateway", {"metrics": {}}))


def test_unknown_types_follow_the_prefix_policy_and_are_counted(cache: SchemaCache) -> None:
    cache.validate(event("claude.session.started", {"anything": True}))
    cache.validate(event("ai.experimental.thing", {}))
    with pytest.raises(MissingSchemaError):
        cache.validate(event("ai.unknown", {}))
    assert cache.unknown_types == {
        "claude.session.started": 1,
        "ai.experimental.thing": 1,
        "ai.unknown": 1,
    }
    strict = SchemaCache(default_unknown="reject")
    with pytest.raises(MissingSchemaError):
        strict.validate(event("x.y", {}))


def test_deleted_version_is_never_latest_but_still_validates_when_named(
    cache: SchemaCache,
) -> None:
    cache.apply(record("mcp.server.error", 2, SEVERITY_V2, deleted=True))
    assert cache.get("mcp.server.error").version == 1
    cache.validate(
        event(
            "mcp.server.error",
            {"error": "x", "severity": 5},
            dataschema=schema_ref("mcp.server.error", 2),
        )
    )


def test_binary_json_data_is_decoded_and_opaque_data_refused(cache: SchemaCache) -> None:
    cache.validate_data("mcp.server.error", b'{"error": "x"}', datacontenttype="application/json")
    with pytest.raises(SchemaValidationError, match="not JSON"):
        cache.validate_data("mcp.server.error", b"\x00\x01", datacontenttype="image/png")


async def test_cache_follows_the_kv_bucket_live(nats_client) -> None:
    js = nats_client.jetstream()
    store = await SchemaStore.open(js)
    await store.register("mcp.server.error", SEVERITY_V1)
    cache = await SchemaCache.start(js)
    try:
        assert cache.ready
        assert cache.get("mcp.server.error").version == 1
        await store.register("mcp.server.error", SEVERITY_V2)
        await eventually(lambda: _has_version(cache, "mcp.server.error", 2), timeout_s=5)
        await store.delete("mcp.server.error", 2)
        await eventually(lambda: _latest_is(cache, "mcp.server.error", 1), timeout_s=5)
    finally:
        await cache.stop()


async def test_seed_schemas_register_straight_into_kv_and_validate_platform_events(
    nats_client,
) -> None:
    js = nats_client.jetstream()
    results = await register_seed_schemas(js, _seed_dir())
    assert {r.type for r in results} >= {"mcp.server.error", "system.metrics", "ai.prediction"}
    assert all(r.created for r in results)
    again = await register_seed_schemas(js, _seed_dir())
    assert not any(r.created for r in again)
    cache = await SchemaCache.start(js)
    try:
        cache.validate(event("mcp.server.error", {"error": "Connection timeout", "severity": 0.8}))
        with pytest.raises(SchemaValidationError) as caught:
            cache.validate(event("mcp.server.error", {"error": "x", "severity": 3}))
        assert caught.value.path == "$.severity"
        snapshot = {
            "service": "gateway",
            "instance": "h-1",
            "interval_s": 5.0,
            "metrics": {"events_published": 3.0},
        }
        cache.validate(event("system.metrics.gateway", snapshot))
        with pytest.raises(SchemaValidationError):
            cache.validate(event("system.metrics.gateway", {**snapshot, "metrics": {"x": "1"}}))
        cache.validate(event("system.resilience.breaker.opened", {"name": "db", "extra": 1}))
    finally:
        await cache.stop()


def _seed_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "deploy" / "schemas"


async def _has_version(cache: SchemaCache, event_type: str, version: int) -> None:
    assert cache.get(event_type, version) is not None


async def _latest_is(cache: SchemaCache, event_type: str, version: int) -> None:
    assert cache.get(event_type).version == version


def test_validation_is_fast_enough_for_the_hot_path(cache: SchemaCache) -> None:
    # A loose guard (the benchmark measures properly): 2k validations well under a second.
    data = {"error": "x" * 200, "severity": 0.5}
    started = time.perf_counter()
    for _ in range(2000):
        cache.validate_data("mcp.server.error", data)
    assert time.perf_counter() - started < 1.0
