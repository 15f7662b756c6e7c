"""RegistryService.dispatch without a broker: every operation and every error code."""

from __future__ import annotations

import orjson
import pytest

from backbone.schemas import ERROR_CODES, MemorySchemaBucket, SchemaStore
from schema_registry.handlers import endpoint_name
from schema_registry.service import OPERATIONS, RegistryService

SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


@pytest.fixture
def service() -> RegistryService:
    return RegistryService(SchemaStore(MemorySchemaBucket(), max_schema_bytes=2048))


async def call(service: RegistryService, op: str, payload) -> tuple[dict, str | None]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    body, error = await service.dispatch(op, raw)
    decoded = orjson.loads(body)
    if error is not None:
        assert decoded["error"]["code"] == error.code
        assert set(decoded["error"]) >= {"code", "message", "path"}
    return decoded, error.code if error else None


async def test_every_operation_round_trips(service: RegistryService) -> None:
    reply, err = await call(service, "register", {"type": "t", "schema": SCHEMA})
    assert err is None
    assert reply["version"] == 1
    assert reply["ref"] == "backbone://schemas/t/1"
    assert (await call(service, "get", {"type": "t"}))[0]["schema"] == SCHEMA
    assert (await call(service, "get", {"type": "t", "version": "latest"}))[0]["version"] == 1
    assert (await call(service, "list", {}))[0] == {"types": ["t"]}
    assert (await call(service, "list", {"type": "t"}))[0]["versions"][0]["version"] == 1
    check, _ = await call(service, "check", {"type": "t", "schema": {**SCHEMA, "required": []}})
    assert check["compatible"]
    config, _ = await call(service, "config.set", {"type": "t", "mode": "FULL"})
    assert config == {"mode": "FULL", "policy": "LENIENT", "source": "type"}
    assert (await call(service, "config.get", {"type": "t"}))[0]["mode"] == "FULL"
    valid, _ = await call(service, "validate", {"type": "t", "data": {"error": 1}})
    assert valid["errors"] == [{"path": "$.error", "message": '1 is not of type "string"'}]
    deleted, _ = await call(service, "delete", {"type": "t", "version": 1})
    assert deleted["deleted"]


@pytest.mark.parametrize(
    ("op", "payload", "code"),
    [
        ("register", b"{not json", "invalid_json"),
        ("register", b"[1, 2]", "invalid_request"),
        ("register", {"schema": SCHEMA}, "invalid_request"),
        ("register", {"type": "", "schema": SCHEMA}, "invalid_type"),
        ("register", {"type": "t", "schema": {"type": 12}}, "invalid_schema"),
        ("register", {"type": "t", "schema": {"enum": ["x" * 3000]}}, "schema_too_large"),
        ("register", b"x" * 10_000, "schema_too_large"),
        ("get", {"type": "nope"}, "not_found"),
        ("get", {"type": "t", "version": 0}, "invalid_request"),
        ("delete", {"type": "t"}, "invalid_request"),
        ("config.set", {"mode": "WHATEVER"}, "invalid_mode"),
        ("frobnicate", {}, "invalid_request"),
    ],
)
async def test_bad_requests_get_structured_errors(service, op, payload, code) -> None:
    _, err = await call(service, op, payload)
    assert err == code
    assert code in ERROR_CODES
    # and the service keeps serving
    assert (await call(service, "list", {}))[1] is None


async def test_incompatible_registration_lists_the_breaking_changes(service) -> None:
    await call(service, "register", {"type": "t", "schema": SCHEMA})
    bad = {**SCHEMA, "properties": {"error": {"type": "integer"}}}
    reply, err = await call(service, "register", {"type": "t", "schema": bad})
    assert err == "incompatible"
    assert reply["error"]["path"] == "$.error"
    assert reply["error"]["changes"][0]["keyword"] == "type"


async def test_unexpected_failure_becomes_an_internal_error(service, monkeypatch) -> None:
    async def boom(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(service.store, "list_types", boom)
    reply, err = await call(service, "list", {})
    assert err == "internal"
    assert "disk on fire" in reply["error"]["message"]


def test_endpoint_names_are_valid_micro_names() -> None:
    assert [endpoint_name(op) for op in OPERATIONS] == [
        "register", "get", "list", "check", "config-get", "config-set", "delete", "validate",
    ]  # fmt: skip
