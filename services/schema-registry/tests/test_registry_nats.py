"""The registry over a real nats-server: replicas, restarts, races, bad input, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import httpx
import nats
import orjson
import pytest

from backbone.schemas import (
    SUBJECT_REGISTER,
    IncompatibleSchemaError,
    InvalidRequestError,
    InvalidSchemaError,
    RegistryClient,
    RegistryUnavailableError,
    SchemaNotFoundError,
    SchemaTooLargeError,
)
from backbone.settings import NatsSettings
from backbone.testing import eventually
from schema_registry.app import MICRO_NAME, RegistryApp, create_app
from schema_registry.settings import RegistrySection, RegistrySettings

SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def settings_for(url: str, **registry) -> RegistrySettings:
    return RegistrySettings(nats=NatsSettings(servers=[url]), registry=RegistrySection(**registry))


async def start_replica(
    url: str, name: str, *, with_ops_server: bool = True, **registry
) -> RegistryApp:
    app = create_app(settings_for(url, instance=name, **registry), with_ops_server=with_ops_server)
    await app.start()
    return app


@pytest.fixture
async def replicas(nats_server):
    apps = [
        await start_replica(nats_server.url, "r1", with_ops_server=False),
        await start_replica(nats_server.url, "r2", with_ops_server=False),
    ]
    yield apps
    for app in apps:
        await app.stop()


async def test_two_replicas_share_requests_and_answer_the_same(replicas, nats_client) -> None:
    client = RegistryClient(nats_client)
    await client.register("mcp.server.error", SCHEMA)
    answers = [await client.get("mcp.server.error") for _ in range(40)]
    assert {(a.version, a.fingerprint) for a in answers} == {(1, answers[0].fingerprint)}
    served = [
        sum(e.num_requests for e in app.service.stats().endpoints if e.name == "get")
        for app in replicas
    ]
    assert sum(served) == 40
    assert all(n > 0 for n in served), served  # the queue group spread the load
    info = orjson.loads((await nats_client.request(f"$SRV.INFO.{MICRO_NAME}", b"")).data)
    assert {e["queue_group"] for e in info["endpoints"]} == {"backbone-registry"}


async def test_state_survives_a_registry_and_server_restart(nats_server) -> None:
    # Own connections, closed before the restart: nothing reconnects across it, so the test
    # proves the state is on disk rather than in some client's memory.
    nc = await nats.connect(nats_server.url)
    app = await start_replica(nats_server.url, "r1", with_ops_server=False)
    client = RegistryClient(nc)
    await client.register("t", SCHEMA)
    await client.register("t", {**SCHEMA, "properties": {**SCHEMA["properties"], "n": {}}})
    await client.set_config("t", mode="FULL_TRANSITIVE")
    await client.delete("t", 1)
    await app.stop()
    await nc.close()

    nats_server.restart()
    nc = await nats.connect(nats_server.url)
    app = await start_replica(nats_server.url, "r1-again", with_ops_server=False)
    client = RegistryClient(nc)
    try:
        versions = await eventually(lambda: client.list_versions("t"), timeout_s=10)
        assert [(v["version"], v["deleted"]) for v in versions] == [(1, True), (2, False)]
        assert (await client.get("t")).version == 2
        assert (await client.get_config("t")).mode.value == "FULL_TRANSITIVE"
        assert (await client.register("t", SCHEMA)).version == 3  # v1 deleted: new version
    finally:
        await app.stop()
        await nc.close()


async def test_concurrent_registration_from_two_clients_is_consistent(
    replicas, nats_server
) -> None:
    a, b = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
    try:
        clients = [RegistryClient(a), RegistryClient(b)]
        schemas = [
            {"type": "object", "properties": {f"f{i}": {"type": "string"}}} for i in range(10)
        ]
        results = await asyncio.gather(
            *(clients[i % 2].register("race", s) for i, s in enumerate(schemas)),
            *(clients[i % 2].register("same", SCHEMA) for i in range(6)),
        )
        race, same = results[:10], results[10:]
        assert sorted(r.version for r in race) == list(range(1, 11))
        for result, schema in zip(race, schemas, strict=True):
            assert (await clients[0].get("race", result.version)).schema == schema
        assert {r.version for r in same} == {1}
        assert sum(r.created for r in same) == 1
    finally:
        await a.close()
        await b.close()


async def test_bad_input_gets_clear_errors_and_the_registry_keeps_serving(
    nats_server, nats_client
) -> None:
    app = await start_replica(nats_server.url, "r1", with_ops_server=False, max_schema_bytes=4096)
    client = RegistryClient(nats_client)
    try:
        raw = await nats_client.request(SUBJECT_REGISTER, b"{nope", timeout=2)
        assert raw.headers["Nats-Service-Error-Code"] == "400"
        assert orjson.loads(raw.data)["error"]["code"] == "invalid_json"
        with pytest.raises(InvalidSchemaError) as caught:
            await client.register("t", {"type": "object", "properties": {"a": {"minimum": "0"}}})
        assert caught.value.path == "$.properties.a.minimum"
        with pytest.raises(SchemaTooLargeError):
            await client.register("t", {"enum": [f"value-{i}" for i in range(2000)]})
        with pytest.raises(SchemaNotFoundError):
            await client.get("unknown.type")
        await client.register("t", SCHEMA)
        with pytest.raises(SchemaNotFoundError):
            await client.get("t", 42)
        with pytest.raises(InvalidRequestError):
            await client.set_config(None, mode="BACKWARDS")
        with pytest.raises(IncompatibleSchemaError) as incompatible:
            await client.register("t", {**SCHEMA, "required": ["error", "code"]})
        assert incompatible.value.changes[0]["path"] == "$.code"
        assert (await client.get("t")).version == 1  # still serving, nothing changed
    finally:
        await app.stop()


async def test_no_replica_means_unavailable(nats_client) -> None:
    with pytest.raises(RegistryUnavailableError):
        await RegistryClient(nats_client, timeout_s=0.5).list_types()


async def test_ops_endpoints_report_ready_and_metrics(nats_server, nats_client) -> None:
    app = await start_replica(nats_server.url, "r1")
    try:
        await RegistryClient(nats_client).list_types()
        async with httpx.AsyncClient(base_url=app.ops.url) as http:
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get("/readyz")).json()["ready"] is True
            metrics = (await http.get("/metrics")).text
        assert 'backbone_registry_requests_total{code="ok",operation="list"} 1.0' in metrics
    finally:
        await app.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_process_serves_and_drains_on_sigterm(nats_server, nats_client) -> None:
    env = {
        **os.environ,
        "BACKBONE_NATS__SERVERS": nats_server.url,
        "BACKBONE_HTTP__PORT": str(_free_port()),
        "BACKBONE_LOG_FORMAT": "text",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "schema_registry"], env=env, stderr=subprocess.PIPE
    )
    try:
        client = RegistryClient(nats_client, timeout_s=0.5)
        await eventually(client.list_types, timeout_s=20)
        assert (await client.register("proc.type", SCHEMA)).version == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
