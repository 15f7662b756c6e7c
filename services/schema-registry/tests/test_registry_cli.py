"""`backbone schema ...` against a running registry (CLI runs in a thread, registry in the loop)."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from backbone.cli.schema import app
from backbone.settings import NatsSettings
from schema_registry.app import create_app
from schema_registry.settings import RegistrySettings

V1 = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
V2 = {**V1, "properties": {**V1["properties"], "severity": {"type": "number"}}}
BREAKING = {**V2, "required": ["error", "severity"]}


@pytest.fixture
async def registry(nats_server, monkeypatch):
    monkeypatch.setenv("BACKBONE_NATS__SERVERS", nats_server.url)
    settings = RegistrySettings(nats=NatsSettings(servers=[nats_server.url]))
    registry_app = create_app(settings, with_ops_server=False)
    await registry_app.start()
    yield registry_app
    await registry_app.stop()


async def cli(*args: str):
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


async def test_schema_commands_end_to_end(registry, tmp_path) -> None:
    v1, v2, bad = tmp_path / "v1.json", tmp_path / "v2.json", tmp_path / "bad.json"
    v1.write_text(json.dumps(V1))
    v2.write_text(json.dumps(V2))
    bad.write_text(json.dumps(BREAKING))

    result = await cli("register", "mcp.server.error", str(v1))
    assert result.exit_code == 0, result.output
    assert "registered: mcp.server.error v1" in result.output
    assert "already registered" in (await cli("register", "mcp.server.error", str(v1))).output

    ok = await cli("check", "mcp.server.error", str(v2))
    assert ok.exit_code == 0
    assert "compatible" in ok.output

    broken = await cli("check", "mcp.server.error", str(bad))
    assert broken.exit_code == 1
    assert "INCOMPATIBLE" in broken.output
    assert "$.severity  [required]" in broken.output

    refused = await cli("register", "mcp.server.error", str(bad))
    assert refused.exit_code == 1

    assert (await cli("register", "mcp.server.error", str(v2), "--json")).exit_code == 0
    listed = await cli("list")
    assert listed.output.split() == ["mcp.server.error"]
    versions = await cli("list", "mcp.server.error", "--json")
    assert [v["version"] for v in json.loads(versions.output)["versions"]] == [1, 2]
    shown = await cli("show", "mcp.server.error", "--version", "1")
    assert json.loads(shown.output)["schema"] == V1

    assert "global: BACKWARD" in (await cli("mode")).output
    assert "mcp.server.error: FULL" in (await cli("mode", "mcp.server.error", "FULL")).output
    assert "global: NONE" in (await cli("mode", "NONE")).output
    assert "mcp.server.error: FULL" in (await cli("mode", "mcp.server.error")).output

    missing = await cli("show", "nope")
    assert missing.exit_code == 1


def test_offline_check_against_files_needs_no_registry(tmp_path) -> None:
    v1, bad = tmp_path / "v1.json", tmp_path / "bad.json"
    v1.write_text(json.dumps(V1))
    bad.write_text(json.dumps(BREAKING))
    result = CliRunner().invoke(app, ["check", "t", str(bad), "--against", str(v1), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["compatible"] is False
    assert report["changes"][0]["path"] == "$.severity"
    same = CliRunner().invoke(app, ["check", "t", str(v1), "--against", str(v1)])
    assert same.exit_code == 0
