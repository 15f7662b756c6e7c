"""API keys, scopes, unauthenticated mode and rate limits."""

from __future__ import annotations

import hashlib

import pytest

from backbone.errors import ConfigError
from event_gateway.auth import KeyStore, scope_allows
from event_gateway.problems import ProblemError
from event_gateway.settings import ApiKeyEntry
from event_gateway.testing import (
    API_KEY,
    MCP_KEY,
    auth,
    gateway_settings,
    running_gateway,
    stored_events,
)

HEADERS = {
    "ce-specversion": "1.0",
    "ce-type": "mcp.server.error",
    "ce-source": "/claude/mcp/filesystem",
    "ce-id": "auth-1",
    "content-type": "application/json",
}


def entry(key: str, scopes: list[str], name: str = "k") -> ApiKeyEntry:
    return ApiKeyEntry(name=name, sha256=hashlib.sha256(key.encode()).hexdigest(), scopes=scopes)


def test_scope_prefix_matches_whole_tokens_only():
    assert scope_allows(["mcp"], "mcp.server.error")
    assert scope_allows(["mcp."], "mcp.server.error")
    assert scope_allows(["mcp"], "mcp")
    assert not scope_allows(["mcp"], "mcpx.server")
    assert scope_allows(["claude.session"], "claude.session.started")
    assert not scope_allows(["claude.session"], "claude.tool.used")
    assert scope_allows(["*"], "anything.at.all")
    assert not scope_allows([], "mcp.x")


def test_key_store_matches_hashed_keys_and_refuses_others():
    store = KeyStore([entry("alpha", ["mcp"], "a"), entry("beta", ["*"], "b")])
    assert store.authenticate("Bearer alpha", None, "10.0.0.1").name == "a"
    assert store.authenticate("bearer   beta", None, None).name == "b"
    assert store.authenticate(None, "alpha", None).name == "a"
    for header in ("Bearer gamma", "Basic YWxwaGE=", "Bearer "):
        with pytest.raises(ProblemError) as info:
            store.authenticate(header, None, "127.0.0.1")
        assert info.value.status == 401
    with pytest.raises(ProblemError):
        store.authenticate(None, None, "127.0.0.1")


def test_unauthenticated_mode_serves_loopback_peers_only():
    store = KeyStore([], allow_unauthenticated=True)
    assert store.authenticate(None, None, "127.0.0.1").name == "anonymous"
    assert store.authenticate(None, None, "::1").name == "anonymous"
    with pytest.raises(ProblemError):
        store.authenticate(None, None, "192.168.1.5")


def test_unauthenticated_mode_on_a_public_address_is_a_config_error(tmp_path):
    settings = gateway_settings("nats://127.0.0.1:4222", allow_unauthenticated=True)
    settings.http.host = "0.0.0.0"
    with pytest.raises(ConfigError) as info:
        KeyStore.from_settings(settings)
    assert info.value.variable == "BACKBONE_GATEWAY__ALLOW_UNAUTHENTICATED"


def test_keys_file_and_dev_key_file_are_loaded_hashed(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"from-file").hexdigest()
    keys_file.write_text(f"keys:\n  - name: ci\n    sha256: {digest}\n    scopes: [claude]\n")
    dev_file = tmp_path / "gateway-dev-key"
    dev_file.write_text("dev-secret-key\n")
    dev_file.chmod(0o600)
    settings = gateway_settings(
        "nats://127.0.0.1:4222", api_keys=[], api_keys_file=keys_file, dev_key_file=dev_file
    )
    store = KeyStore.from_settings(settings)
    ci = store.authenticate("Bearer from-file", None, None)
    assert ci.name == "ci"
    assert ci.allows("claude.x")
    assert not ci.allows("mcp.x")
    dev = store.authenticate("Bearer dev-secret-key", None, None)
    assert dev.name == "dev"
    assert dev.allows("mcp.anything")


def test_invalid_keys_file_names_the_variable_and_entry(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys:\n  - name: ci\n    sha256: not-hex\n")
    settings = gateway_settings("nats://127.0.0.1:4222", api_keys_file=keys_file)
    with pytest.raises(ConfigError) as info:
        KeyStore.from_settings(settings)
    assert info.value.variable == "BACKBONE_GATEWAY__API_KEYS_FILE"
    assert "keys[0].sha256" in str(info.value)


async def test_requests_without_or_with_a_wrong_key_are_401_and_store_nothing(gateway, streams):
    client, _ = gateway
    resp = await client.post("/v1/events", content=b"{}", headers=HEADERS)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    resp = await client.post("/v1/events", content=b"{}", headers={**HEADERS, **auth("wrong")})
    assert resp.status_code == 401
    assert await stored_events(streams, "MCP_EVENTS") == []


async def test_scoped_key_may_publish_its_prefix_only(gateway, streams):
    client, _ = gateway
    resp = await client.post("/v1/events", content=b"{}", headers={**HEADERS, **auth(MCP_KEY)})
    assert resp.status_code == 202
    headers = {**HEADERS, "ce-type": "claude.session.started", **auth(MCP_KEY)}
    resp = await client.post("/v1/events", content=b"{}", headers=headers)
    assert resp.status_code == 403
    assert resp.json()["attribute"] == "type"
    assert await stored_events(streams, "CLAUDE_EVENTS") == []


async def test_per_key_rate_limit_answers_429_with_retry_after(nats_server, streams):
    settings = gateway_settings(
        nats_server.url,
        rate_limit={"per_key_per_s": 0.5, "per_key_burst": 2, "global_per_s": 1000},
    )
    async with running_gateway(settings) as (client, _):
        statuses = []
        for index in range(3):
            headers = {**HEADERS, "ce-id": f"rl-{index}", **auth(API_KEY)}
            resp = await client.post("/v1/events", content=b"{}", headers=headers)
            statuses.append(resp.status_code)
        assert statuses == [202, 202, 429]
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["reason"] == "rate-limited"
        # Another key has its own bucket.
        headers = {**HEADERS, "ce-id": "rl-other", **auth(MCP_KEY)}
        assert (await client.post("/v1/events", content=b"{}", headers=headers)).status_code == 202
        metrics = (await client.get("/metrics")).text
        assert 'backbone_gateway_rejections_total{reason="rate-limited"} 1.0' in metrics


async def test_global_rate_limit_applies_across_keys(nats_server, streams):
    settings = gateway_settings(
        nats_server.url, rate_limit={"global_per_s": 0.5, "global_burst": 1}
    )
    async with running_gateway(settings) as (client, _):
        first = await client.post("/v1/events", content=b"{}", headers={**HEADERS, **auth()})
        second = await client.post(
            "/v1/events", content=b"{}", headers={**HEADERS, "ce-id": "g2", **auth(MCP_KEY)}
        )
        assert (first.status_code, second.status_code) == (202, 429)
        assert "global" in second.json()["detail"]
