from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import nats
import pytest
from typer.testing import CliRunner

from backbone.cli.resilience import app as resilience_app
from backbone.resilience import (
    CircuitOpenError,
    RateLimiterConfig,
    ResilienceControl,
    ResilienceEvent,
    ResilienceRegistry,
    control_subject,
    request_all,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

    from backbone.testing import NatsServer


def test_control_subject_is_one_token_per_service() -> None:
    assert control_subject("gateway") == "backbone.control.gateway.resilience"
    with pytest.raises(ValueError, match="subject token"):
        control_subject("a.b")


def test_handle_validates_requests_without_io() -> None:
    registry = ResilienceRegistry()
    registry.circuit_breaker("db")
    control = ResilienceControl(registry, nc=None, service="svc", replica="r1")  # type: ignore[arg-type]
    assert control.handle([])["error"] == "request must be a JSON object"
    assert "unknown op" in control.handle({"op": "explode"})["error"]
    assert control.handle({"op": "force_open", "name": "nope"})["ok"] is False
    assert control.handle({"op": "reset", "name": "nope"})["ok"] is False
    reply = control.handle({"op": "metrics_only", "name": "db"})
    assert reply["ok"]
    assert reply["instances"][0]["state"] == "METRICS_ONLY"


async def test_every_replica_answers_and_obeys(
    nats_server: NatsServer, nats_client: Client
) -> None:
    replicas = []
    connections = []
    for i in range(2):
        nc = await nats.connect(nats_server.url)
        connections.append(nc)
        registry = ResilienceRegistry()
        registry.circuit_breaker("github")
        registry.bulkhead("github")
        audit: list[ResilienceEvent] = []
        registry.add_listener(audit.append)
        control = ResilienceControl(registry, nc, service="gateway", replica=f"r{i}")
        await control.start()
        replicas.append((registry, control, audit))
    try:
        await nats_client.flush()
        for nc in connections:
            await nc.flush()

        replies = await request_all(
            nats_client, "gateway", "list", timeout_s=2.0, expected_replies=2
        )
        assert sorted(r["replica"] for r in replies) == ["r0", "r1"]
        assert all(r["ok"] for r in replies)
        assert {i["kind"] for i in replies[0]["instances"]} == {"circuitbreaker", "bulkhead"}

        replies = await request_all(
            nats_client, "gateway", "force_open", name="github", timeout_s=2.0, expected_replies=2
        )
        assert [r["instances"][0]["state"] for r in replies] == ["FORCED_OPEN", "FORCED_OPEN"]
        for registry, _, audit in replicas:
            breaker = registry.circuit_breaker("github")
            assert breaker.state.value == "FORCED_OPEN"
            with pytest.raises(CircuitOpenError):
                breaker.acquire()
            assert any(e.type == "system.resilience.control.gateway.force_open" for e in audit)

        replies = await request_all(
            nats_client, "gateway", "disable", name="github", timeout_s=2.0, expected_replies=2
        )
        assert all(r["instances"][0]["state"] == "DISABLED" for r in replies)
        replies = await request_all(
            nats_client, "gateway", "reset", timeout_s=2.0, expected_replies=2
        )
        assert all(len(r["instances"]) == 2 for r in replies)
        for registry, _, _ in replicas:
            assert registry.circuit_breaker("github").state.value == "CLOSED"

        replies = await request_all(
            nats_client, "gateway", "close", name="nope", timeout_s=2.0, expected_replies=2
        )
        assert all(not r["ok"] and "nope" in r["error"] for r in replies)

        # malformed request: answered with an error, the responder keeps working
        reply = await nats_client.request(control_subject("gateway"), b"{not json", timeout=2.0)
        assert json.loads(reply.data)["ok"] is False
        assert await request_all(nats_client, "nobody", "list", timeout_s=0.2) == []
    finally:
        for _, control, _ in replicas:
            await control.stop()
        for nc in connections:
            await nc.close()


async def test_cli_talks_to_the_control_subject(
    nats_server: NatsServer, nats_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ResilienceRegistry()
    registry.circuit_breaker("mcp")
    monkeypatch.setenv("BACKBONE_NATS__SERVERS", nats_server.url)
    runner = CliRunner()
    async with ResilienceControl(registry, nats_client, service="relay", replica="only"):
        await nats_client.flush()
        result = await asyncio.to_thread(
            runner.invoke,
            resilience_app,
            ["force-open", "--service", "relay", "--name", "mcp", "--replicas", "1", "--json"],
        )
        assert result.exit_code == 0, result.output
        reply = json.loads(result.stdout.splitlines()[0])
        assert reply["instances"][0]["state"] == "FORCED_OPEN"
        assert registry.circuit_breaker("mcp").state.value == "FORCED_OPEN"

        result = await asyncio.to_thread(
            runner.invoke, resilience_app, ["list", "-s", "relay", "--replicas", "1"]
        )
        assert result.exit_code == 0, result.output
        assert "FORCED_OPEN" in result.stdout
        assert "mcp" in result.stdout

        result = await asyncio.to_thread(
            runner.invoke,
            resilience_app,
            ["close", "-s", "relay", "-n", "ghost", "--replicas", "1"],
        )
        assert result.exit_code == 1

    result = await asyncio.to_thread(
        runner.invoke, resilience_app, ["list", "-s", "relay", "--timeout", "0.2"]
    )
    assert result.exit_code == 1
    assert "no replica" in result.output


def test_rate_ops_validate_without_io() -> None:
    registry = ResilienceRegistry()
    registry.rate_limiter("ingress", RateLimiterConfig(rate_per_s=100))
    registry.circuit_breaker("db")
    control = ResilienceControl(registry, nc=None, service="svc", replica="r1")  # type: ignore[arg-type]
    for bad in (None, 0, -5, "fast", True, float("nan")):
        reply = control.handle({"op": "set_rate", "name": "ingress", "rate_per_s": bad})
        assert reply["ok"] is False, bad
        assert "rate_per_s" in reply["error"]
    reply = control.handle({"op": "set_rate", "name": "ingress", "rate_per_s": 5, "burst": 0.5})
    assert not reply["ok"]
    assert "burst" in reply["error"]
    reply = control.handle({"op": "set_rate", "name": "db", "rate_per_s": 5})
    assert reply["error"] == "no rate limiter named 'db'"  # a breaker is no limiter
    assert control.handle({"op": "restore_rate", "name": "nope"})["ok"] is False
    assert registry.rate_limiter("ingress").rate_per_s == 100
    with pytest.raises(ValueError, match="set_rate needs"):
        asyncio.run(request_all(None, "svc", "set_rate"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="belong to set_rate"):
        asyncio.run(request_all(None, "svc", "close", rate_per_s=3.0))  # type: ignore[arg-type]


async def test_set_rate_and_restore_rate_over_nats(nats_client: Client) -> None:
    registry = ResilienceRegistry()
    plain = registry.rate_limiter("ingress", RateLimiterConfig(rate_per_s=1000, max_wait_s=0))
    keyed = registry.keyed_rate_limiter("per-key", RateLimiterConfig(rate_per_s=50, burst=100))
    registry.circuit_breaker("ingress")  # same name, other kind: untouched by rate ops
    audit: list[ResilienceEvent] = []
    registry.add_listener(audit.append)
    async with ResilienceControl(registry, nats_client, service="gw", replica="only"):
        replies = await request_all(
            nats_client,
            "gw",
            "set_rate",
            name="ingress",
            rate_per_s=20.0,
            timeout_s=2.0,
            expected_replies=1,
        )
        assert replies[0]["ok"], replies
        (instance,) = replies[0]["instances"]
        assert instance["kind"] == "ratelimiter"
        assert (instance["rate_per_s"], instance["burst"]) == (20.0, 20.0)
        assert instance["configured_rate_per_s"] == 1000.0
        assert plain.rate_per_s == 20.0
        assert keyed.rate_per_s == 50.0
        # the throttle bites: a drained bucket of 20 admits ~20 of 1000 immediate calls
        assert sum(plain.try_acquire() for _ in range(1000)) <= 21

        # every limiter when no name is given, with an explicit burst
        replies = await request_all(
            nats_client, "gw", "set_rate", rate_per_s=5.0, burst=2.0, timeout_s=2.0,
            expected_replies=1,
        )  # fmt: skip
        assert {(i["name"], i["rate_per_s"], i["burst"]) for i in replies[0]["instances"]} == {
            ("ingress", 5.0, 2.0),
            ("per-key", 5.0, 2.0),
        }
        control_events = [e for e in audit if e.kind == "control"]
        assert control_events[-1].type == "system.resilience.control.gw.set_rate"
        assert control_events[-1].data["rate_per_s"] == 5.0

        replies = await request_all(
            nats_client, "gw", "restore_rate", timeout_s=2.0, expected_replies=1
        )
        assert replies[0]["ok"]
        assert (plain.rate_per_s, plain.burst) == (1000.0, 1000.0)
        assert (keyed.rate_per_s, keyed.burst) == (50.0, 100.0)
        assert any(e.event == "rate_restored" for e in audit)


async def test_cli_set_rate_and_restore_rate(
    nats_server: NatsServer, nats_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ResilienceRegistry()
    limiter = registry.rate_limiter("ingress", RateLimiterConfig(rate_per_s=100))
    monkeypatch.setenv("BACKBONE_NATS__SERVERS", nats_server.url)
    runner = CliRunner()
    async with ResilienceControl(registry, nats_client, service="gw", replica="only"):
        await nats_client.flush()
        result = await asyncio.to_thread(
            runner.invoke,
            resilience_app,
            ["set-rate", "-s", "gw", "-n", "ingress", "--rate", "7.5", "--replicas", "1", "--json"],
        )
        assert result.exit_code == 0, result.output
        (instance,) = json.loads(result.stdout.splitlines()[0])["instances"]
        assert (instance["rate_per_s"], instance["configured_rate_per_s"]) == (7.5, 100.0)
        assert limiter.rate_per_s == 7.5
        result = await asyncio.to_thread(
            runner.invoke, resilience_app, ["restore-rate", "-s", "gw", "--replicas", "1"]
        )
        assert result.exit_code == 0, result.output
        assert "ingress" in result.stdout
        assert limiter.rate_per_s == 100.0
        result = await asyncio.to_thread(
            runner.invoke, resilience_app, ["set-rate", "-s", "gw", "--rate", "0"]
        )
        assert result.exit_code != 0
        assert limiter.rate_per_s == 100.0
