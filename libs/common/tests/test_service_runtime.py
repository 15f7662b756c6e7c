"""backbone.service: the lifecycle every service shares, against a real nats-server."""

import asyncio
import importlib
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from backbone.errors import ConfigError
from backbone.events import CloudEvent, decode_nats
from backbone.messaging import apply_streams, load_catalog
from backbone.resilience import CircuitState, ResilienceRegistry, request_all
from backbone.service import ServiceRuntime, ServiceStateError, service_main
from backbone.settings import BackboneSettings

STREAMS = Path(__file__).resolve().parents[3] / "deploy" / "streams.yaml"


def settings_for(url: str, *, publish_metrics: bool = True, interval_s: float = 0.2):
    return BackboneSettings(
        nats={"servers": [url], "connect_timeout_s": 0.5},
        http={"port": 0},
        streams_file=STREAMS,
        telemetry={"publish_metrics": publish_metrics, "metrics_interval_s": interval_s},
    )


async def until(predicate, *, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_readyz_waits_for_nats_and_service_checks_and_metrics_are_served(
    nats_server, nats_client
):
    await apply_streams(nats_client.jetstream(), load_catalog(STREAMS))
    warm = {"cache": False}
    runtime = ServiceRuntime(
        "svc-ready",
        settings_for(nats_server.url, publish_metrics=False),
        readiness={"cache": lambda: warm["cache"]},
    )
    async with runtime as ctx, httpx.AsyncClient(base_url=runtime.ops.url) as http:
        assert (await http.get("/livez")).status_code == 200
        cold = await http.get("/readyz")
        assert cold.status_code == 503
        assert cold.json()["checks"] == {"nats": True, "cache": False}
        warm["cache"] = True
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {"nats": True, "cache": True}}
        await ctx.publisher.publish(CloudEvent.create(type="mcp.svc.ready", source="/t", data={}))
        metrics = (await http.get("/metrics")).text
        assert 'backbone_events_published_total{stream="MCP_EVENTS",type="mcp.svc.ready"} 1.0' in (
            metrics
        )
    assert not runtime.ops.running
    assert runtime.nc.is_closed
    with pytest.raises(ServiceStateError):
        runtime.add_readiness("late", lambda: True)
    with pytest.raises(ServiceStateError):
        await runtime.start()


async def test_metrics_snapshots_are_published_with_the_service_gauges(nats_server, nats_client):
    await apply_streams(nats_client.jetstream(), load_catalog(STREAMS))
    snapshots = await nats_client.subscribe("system.metrics.svc-metrics")
    runtime = ServiceRuntime(
        "svc-metrics", settings_for(nats_server.url), instance="replica-a", ops_server=False
    )

    async def queue_depth() -> float:
        return 7.0

    async with runtime as ctx:
        ctx.add_gauge("widgets", lambda: 3.0)
        ctx.add_gauge("queue_depth", queue_depth)
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "no snapshot with the gauges"
            msg = await snapshots.next_msg(timeout=5)
            event = decode_nats(msg.headers, msg.data)
            if "widgets" in event.data["metrics"]:
                break
    assert not runtime.reporter.running
    assert event.type == "system.metrics.svc-metrics"
    assert event.source == "/backbone/svc-metrics"
    assert event.subject == "replica-a"
    assert event.data["instance"] == "replica-a"
    assert event.data["metrics"]["widgets"] == 3.0
    assert event.data["metrics"]["queue_depth"] == 7.0
    assert event.data["metrics"]["events_published"] == 0.0  # its own snapshots do not count


async def test_sigterm_stops_taking_work_runs_cleanups_last_first_and_drains(
    nats_server, nats_client
):
    steps: list[str] = []
    handled: list[bytes] = []
    subscriptions = []

    async def main(ctx):
        async def work(msg):
            await asyncio.sleep(0.05)
            handled.append(msg.data)
            await msg.respond(b"done:" + msg.data)

        subscriptions.append(await ctx.nc.subscribe("svc.work", cb=work))

        async def first_added():
            steps.append("first added")

        async def last_added():
            steps.append("last added")

        ctx.on_stop(lambda: steps.append("on_stop"))
        ctx.add_cleanup(first_added)
        ctx.add_cleanup(last_added)
        await ctx.stopping.wait()
        steps.append("main returned")

    runtime = ServiceRuntime(
        "svc-drain",
        settings_for(nats_server.url, publish_metrics=False),
        ops_server=False,
        handle_signals=True,
    )
    before = signal.getsignal(signal.SIGTERM)
    task = asyncio.create_task(runtime.run(main))

    async def subscribed():
        assert not task.done()
        return bool(subscriptions)

    await until(subscribed, what="service subscribed")
    await nats_client.flush()
    requests = [
        asyncio.create_task(nats_client.request("svc.work", str(i).encode(), timeout=10))
        for i in range(5)
    ]

    async def queued():
        return bool(handled) or subscriptions[0].pending_msgs >= 4

    await until(queued, what="requests delivered to the service")
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 15)
    replies = await asyncio.gather(*requests)
    assert sorted(r.data for r in replies) == [f"done:{i}".encode() for i in range(5)]
    assert len(handled) == 5
    assert steps == ["on_stop", "main returned", "last added", "first added"]
    assert runtime.nc.is_closed
    assert signal.getsignal(signal.SIGTERM) == before


async def test_resilience_control_answers_and_operator_actions_are_published(
    nats_server, nats_client
):
    await apply_streams(nats_client.jetstream(), load_catalog(STREAMS))
    events = await nats_client.subscribe("system.resilience.>")
    registry = ResilienceRegistry()
    breaker = registry.circuit_breaker("downstream")
    runtime = ServiceRuntime(
        "svc-control", settings_for(nats_server.url, publish_metrics=False), resilience=registry
    )
    async with runtime as ctx, httpx.AsyncClient(base_url=runtime.ops.url) as http:
        assert ctx.resilience is registry
        replies = await request_all(
            nats_client, "svc-control", "force_open", name="downstream", expected_replies=1
        )
        assert [(r["ok"], r["service"]) for r in replies] == [(True, "svc-control")]
        assert [i["name"] for i in replies[0]["instances"]] == ["downstream"]
        assert breaker.state is CircuitState.FORCED_OPEN
        types = []
        while "system.resilience.control.svc-control.force_open" not in types:
            msg = await events.next_msg(timeout=5)
            types.append(decode_nats(msg.headers, msg.data).type)
        metrics = (await http.get("/metrics")).text
        assert 'backbone_resilience_circuitbreaker_state{name="downstream"' in metrics
    assert await request_all(nats_client, "svc-control", "list", timeout_s=0.3) == []


async def test_stop_while_nats_is_unreachable_skips_main_and_stops_the_ops_server():
    settings = BackboneSettings(
        nats={"servers": [f"nats://127.0.0.1:{free_port()}"], "connect_timeout_s": 0.2},
        http={"port": 0},
        telemetry={"publish_metrics": False},
    )
    runtime = ServiceRuntime("svc-down", settings, connect_initial_s=0.01, connect_max_s=0.05)
    called = []

    async def main(ctx):
        called.append(ctx)

    task = asyncio.create_task(runtime.run(main))

    async def waiting_for_nats():
        assert not task.done()
        if runtime.ops is None or not runtime.ops.running:
            return False
        async with httpx.AsyncClient(base_url=runtime.ops.url) as http:
            assert (await http.get("/livez")).status_code == 200
            ready = await http.get("/readyz")
        return ready.status_code == 503 and ready.json()["checks"]["nats"] is False

    await until(waiting_for_nats, what="/livez up while NATS is unreachable")
    runtime.request_stop()
    await asyncio.wait_for(task, 5)
    assert called == []
    assert not runtime.ops.running


async def test_a_failing_main_still_shuts_down_and_its_error_propagates(nats_server):
    class BoomError(Exception):
        pass

    cleaned = []

    async def cleanup():
        cleaned.append(True)

    async def main(ctx):
        ctx.add_cleanup(cleanup)
        raise BoomError

    runtime = ServiceRuntime(
        "svc-boom", settings_for(nats_server.url, publish_metrics=False), ops_server=False
    )
    with pytest.raises(BoomError):
        await runtime.run(main)
    assert cleaned == [True]
    assert runtime.stopping.is_set()
    assert runtime.nc.is_closed


def test_service_main_reports_configuration_errors_and_exits_2(capsys):
    def create_app():
        raise ConfigError("BACKBONE_HTTP__PORT: bad", variable="BACKBONE_HTTP__PORT")

    with pytest.raises(SystemExit) as exited:
        service_main("svc", create_app)
    assert exited.value.code == 2
    assert capsys.readouterr().err == "svc: BACKBONE_HTTP__PORT: bad\n"


def test_service_names_must_be_one_subject_token():
    with pytest.raises(ConfigError):
        ServiceRuntime("bad.name", BackboneSettings())


def test_all_is_sorted_and_complete():
    module = importlib.import_module("backbone.service")
    exported = module.__all__
    assert exported == sorted(exported, key=lambda n: (not n[:1].isupper(), n))
    public = {
        key
        for key, value in vars(module).items()
        if not key.startswith("_") and getattr(value, "__module__", "") == module.__name__
    }
    assert public == set(exported)


def test_tune_gc_freezes_the_live_heap_and_spaces_out_young_collections():
    import gc  # noqa: PLC0415

    from backbone.service import tune_gc  # noqa: PLC0415

    threshold = gc.get_threshold()
    try:
        frozen = tune_gc()
        assert frozen == gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (20_000, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
