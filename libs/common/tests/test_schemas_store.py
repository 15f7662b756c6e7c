"""SchemaStore over the in-memory bucket: versions, idempotence, modes, races, bad input."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backbone import schemas
from backbone.schemas import (
    CompatibilityMode,
    IncompatibleSchemaError,
    InvalidRequestError,
    InvalidSchemaError,
    MemorySchemaBucket,
    RegistryConflictError,
    SchemaNotFoundError,
    SchemaStore,
    SchemaTooLargeError,
    decode_type,
    encode_type,
    fingerprint,
    parse_schema_ref,
    schema_ref,
    schema_url,
)
from backbone.schemas._naming import parse_key, version_key

V1 = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
V2 = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "severity": {"type": "number"}},
    "required": ["error"],
}
BREAKING = {**V2, "required": ["error", "severity"]}


@pytest.fixture
def store() -> SchemaStore:
    return SchemaStore(MemorySchemaBucket())


def test_public_api_is_sorted_and_complete() -> None:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical.
    def rank(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert schemas.__all__ == sorted(schemas.__all__, key=rank)
    assert all(hasattr(schemas, name) for name in schemas.__all__)


async def test_versions_count_up_and_same_schema_is_idempotent(store: SchemaStore) -> None:
    first = await store.register("mcp.server.error", V1)
    second = await store.register("mcp.server.error", V2)
    again = await store.register("mcp.server.error", {"required": ["error"], **V1})  # key order
    assert (first.version, first.created) == (1, True)
    assert (second.version, second.created) == (2, True)
    assert (again.version, again.created) == (1, False)
    assert (await store.get("mcp.server.error")).version == 2
    assert (await store.get("mcp.server.error", 1)).schema == V1
    assert await store.list_types() == ["mcp.server.error"]
    assert [v["version"] for v in await store.list_versions("mcp.server.error")] == [1, 2]


async def test_incompatible_schema_is_refused_with_its_changes(store: SchemaStore) -> None:
    await store.register("t", V2)
    with pytest.raises(IncompatibleSchemaError) as caught:
        await store.register("t", {**V2, "required": ["error", "severity"]})
    assert caught.value.code == "incompatible"
    assert caught.value.path == "$.severity"
    assert caught.value.changes[0]["keyword"] == "required"
    assert caught.value.changes[0]["version"] == 1
    assert [v["version"] for v in await store.list_versions("t")] == [1]


async def test_mode_per_type_overrides_global_and_none_allows_anything(store: SchemaStore) -> None:
    await store.register("a", V2)
    await store.register("b", V2)
    assert (await store.get_config("a")).to_dict() == {
        "mode": "BACKWARD",
        "policy": "LENIENT",
        "source": "default",
    }
    await store.set_config(None, mode="forward")
    await store.set_config("a", mode=CompatibilityMode.NONE)
    assert (await store.get_config("a")).source == "type"
    assert (await store.get_config("b")).mode is CompatibilityMode.FORWARD
    assert (await store.register("a", {"type": "integer"})).version == 2
    with pytest.raises(IncompatibleSchemaError):
        await store.register("b", {"type": "integer"})  # FORWARD: old readers want objects
    with pytest.raises(InvalidRequestError) as caught:
        await store.set_config("a", mode="SIDEWAYS")
    assert caught.value.code == "invalid_mode"


async def test_check_reports_without_registering(store: SchemaStore) -> None:
    assert (await store.check("new.type", V1)).compatible
    await store.register("t", V2)
    report = await store.check("t", BREAKING)
    assert not report.compatible
    assert report.checked_versions == (1,)
    assert (await store.check("t", BREAKING, mode="NONE")).compatible
    assert [v["version"] for v in await store.list_versions("t")] == [1]


async def test_soft_delete_hides_latest_and_leaves_transitive_history(store: SchemaStore) -> None:
    await store.set_config("t", mode="BACKWARD_TRANSITIVE")
    await store.register("t", {"type": "object", "properties": {"b": {"type": "string"}}})
    await store.register("t", {"type": "object"})
    deleted = await store.delete("t", 1)
    assert deleted.deleted
    assert (await store.get("t", 1)).deleted  # still readable by number, flagged
    assert (await store.get("t")).version == 2
    # With v1 deleted, re-adding 'b' as an integer only meets v2 (open model): compatible.
    third = await store.register("t", {"type": "object", "properties": {"b": {"type": "integer"}}})
    assert third.version == 3
    await store.delete("t", 3)
    await store.delete("t", 2)
    with pytest.raises(SchemaNotFoundError):
        await store.get("t")


async def test_registering_a_deleted_schema_again_creates_a_new_version(store: SchemaStore) -> None:
    await store.register("t", V1)
    await store.delete("t", 1)
    again = await store.register("t", V1)
    assert (again.version, again.created) == (2, True)


async def test_concurrent_registrations_get_distinct_consistent_versions(
    store: SchemaStore,
) -> None:
    candidates = [{"type": "object", "properties": {f"p{i}": {"type": "string"}}} for i in range(8)]
    results = await asyncio.gather(*(store.register("race", c) for c in candidates))
    assert sorted(r.version for r in results) == list(range(1, 9))
    for result, candidate in zip(results, candidates, strict=True):
        assert (await store.get("race", result.version)).schema == candidate
    assert (await store.get("race")).version == 8


async def test_concurrent_registration_of_the_same_schema_yields_one_version(
    store: SchemaStore,
) -> None:
    results = await asyncio.gather(*(store.register("same", V1) for _ in range(6)))
    assert {r.version for r in results} == {1}
    assert sum(r.created for r in results) == 1
    assert [v["version"] for v in await store.list_versions("same")] == [1]


async def test_version_orphaned_by_a_crash_is_rolled_forward(store: SchemaStore) -> None:
    await store.register("t", V1)
    # A writer created v2 and died before updating the index.
    orphan = {
        "type": "t",
        "version": 2,
        "schema": V2,
        "fingerprint": fingerprint(V2),
        "created_at": "2025-01-01T00:00:00Z",
        "deleted": False,
    }
    await store.bucket.create(version_key("t", 2), orjson.dumps(orphan))
    assert (await store.get("t")).version == 2
    assert (await store.register("t", V2)).version == 2  # idempotent against the orphan
    assert (await store.register("t", {**V2, "title": "x"})).version == 3


async def test_writer_that_always_loses_gives_up_with_conflict() -> None:
    class AlwaysTaken(MemorySchemaBucket):
        async def create(self, key: str, value: bytes) -> int:  # noqa: ARG002 - protocol
            raise schemas._store.RevisionMismatchError(key)

        async def get(self, key: str) -> schemas._store.BucketEntry:
            raise schemas._store.KeyMissingError(key)

    with pytest.raises(RegistryConflictError):
        await SchemaStore(AlwaysTaken(), max_attempts=3).register("t", V1)


@pytest.mark.parametrize(
    ("schema", "error", "path"),
    [
        ({"type": "strin"}, InvalidSchemaError, "$.type"),
        ({"$schema": "http://json-schema.org/draft-04/schema#"}, InvalidSchemaError, "$.$schema"),
        ({"$ref": "https://example.com/s.json"}, InvalidSchemaError, "$.$ref"),
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, InvalidSchemaError, "$"),
        ({"pattern": "("}, InvalidSchemaError, "$"),
        ([1, 2], InvalidSchemaError, "$"),
        ({"enum": ["x" * 1000] * 80}, SchemaTooLargeError, "$"),
    ],
    ids=["bad type", "draft-04", "remote ref", "dangling ref", "bad regex", "array", "huge"],
)
async def test_bad_schemas_are_refused_with_a_path(store: SchemaStore, schema, error, path) -> None:
    with pytest.raises(error) as caught:
        await store.register("t", schema)
    assert caught.value.path == path
    assert await store.list_types() == []


@pytest.mark.parametrize("bad_type", ["", "x" * 300, "a\nb", 42])
async def test_invalid_event_types_are_refused(store: SchemaStore, bad_type) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await store.register(bad_type, V1)
    assert caught.value.code == "invalid_type"


async def test_unknown_type_and_version_are_not_found(store: SchemaStore) -> None:
    with pytest.raises(SchemaNotFoundError):
        await store.get("nope")
    await store.register("t", V1)
    with pytest.raises(SchemaNotFoundError) as caught:
        await store.get("t", 9)
    assert caught.value.path == "$.version"
    with pytest.raises(SchemaNotFoundError):
        await store.delete("t", 9)


async def test_validate_reports_paths(store: SchemaStore) -> None:
    await store.register("t", V2)
    ok = await store.validate("t", {"error": "x", "severity": 0.5})
    bad = await store.validate("t", {"severity": "high"})
    assert ok["valid"]
    assert not bad["valid"]
    assert {e["path"] for e in bad["errors"]} == {"$", "$.severity"}


@given(st.text(min_size=1, max_size=60))
def test_type_encoding_round_trips_into_valid_kv_keys(event_type: str) -> None:
    encoded = encode_type(event_type)
    assert decode_type(encoded) == event_type
    key = version_key(event_type, 3)
    assert all((ch.isalnum() and ch.isascii()) or ch in "-_." for ch in key)
    assert "" not in key.split(".")
    assert parse_key(key) == ("version", event_type, 3)


def test_config_keys_never_collide_with_type_keys() -> None:
    assert parse_key("_config") == ("config", None, None)
    assert parse_key("_config.a_2Eb") == ("config", "a.b", None)
    assert encode_type("_config").startswith("_5F")
    assert parse_key(encode_type("_config") + ".latest") == ("latest", "_config", None)


def test_schema_references_parse_both_forms() -> None:
    assert parse_schema_ref(schema_ref("mcp.server.error", 3)) == ("mcp.server.error", 3)
    assert parse_schema_ref("backbone://schemas/a%2Fb/latest") == ("a/b", None)
    url = schema_url("https://gw.example/registry/", "x.y", 2)
    assert url == "https://gw.example/registry/schemas/x.y/versions/2"
    assert parse_schema_ref(url) == ("x.y", 2)
    for foreign in ("https://json-schema.org/x", "backbone://schemas/x/zero", "urn:x", ""):
        assert parse_schema_ref(foreign) is None
