from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from backbone.ops import OpsServer, OpsServerError, ops_routes
from backbone.telemetry import Metrics


async def test_probes_and_metrics_are_served_on_a_free_port():
    metrics = Metrics()
    metrics.record_published(stream="S", event_type="a.b")
    ready = {"nats": lambda: True}

    async def database() -> bool:
        return True

    ready["database"] = database
    async with OpsServer(host="127.0.0.1", port=0, metrics=metrics, readiness=ready) as server:
        assert server.port != 0
        async with httpx.AsyncClient(base_url=server.url) as client:
            live = await client.get("/livez")
            assert live.status_code == 200
            assert live.json() == {"status": "ok"}
            readyz = await client.get("/readyz")
            assert readyz.status_code == 200
            assert readyz.json() == {"ready": True, "checks": {"nats": True, "database": True}}
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain")
            names = {f.name for f in text_string_to_metric_families(scraped.text)}
            assert "backbone_events_published" in names
    assert not server.running


async def test_readyz_is_503_with_each_result_when_a_check_fails_raises_or_hangs():
    async def hangs() -> bool:
        await asyncio.sleep(30)
        return True

    def raises() -> bool:
        raise ConnectionError("no route")

    checks = {"ok": lambda: True, "down": lambda: False, "raises": raises, "hangs": hangs}
    async with (
        OpsServer(readiness=checks, check_timeout_s=0.05) as server,
        httpx.AsyncClient() as client,
    ):
        response = await client.get(f"{server.url}/readyz")
        # /livez stays green: a dependency being down is not a reason to restart the pod.
        assert (await client.get(f"{server.url}/livez")).status_code == 200
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"] == {"ok": True, "down": False, "raises": False, "hangs": False}
    assert body["errors"]["raises"] == "ConnectionError: no route"
    assert body["errors"]["hangs"].startswith("TimeoutError")
    assert "down" not in body["errors"]


async def test_liveness_checks_turn_livez_503():
    async with (
        OpsServer(liveness={"loop_lag": lambda: False}) as server,
        httpx.AsyncClient() as client,
    ):
        response = await client.get(f"{server.url}/livez")
    assert response.status_code == 503
    assert response.json() == {"status": "failing", "checks": {"loop_lag": False}}


async def test_without_metrics_there_is_no_metrics_route_and_extra_routes_are_served():
    async def hello(_):
        return PlainTextResponse("hi")

    async with (
        OpsServer(extra_routes=[Route("/hello", hello)]) as server,
        httpx.AsyncClient() as client,
    ):
        assert (await client.get(f"{server.url}/metrics")).status_code == 404
        assert (await client.get(f"{server.url}/hello")).text == "hi"
        assert (await client.get(f"{server.url}/readyz")).json() == {"ready": True, "checks": {}}


async def test_ops_routes_mount_in_another_starlette_app():
    metrics = Metrics()
    app = Starlette(routes=ops_routes(metrics, {"x": lambda: True}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.get("/readyz")).json() == {"ready": True, "checks": {"x": True}}
        assert (await client.get("/metrics")).status_code == 200


async def test_a_busy_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = OpsServer(port=port)
        with pytest.raises(OpsServerError) as info:
            await server.start()
    assert info.value.port == port
    assert not server.running


async def test_stop_lets_an_in_flight_request_finish():
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(_):
        entered.set()
        await release.wait()
        return PlainTextResponse("done")

    server = OpsServer(extra_routes=[Route("/slow", slow)])
    await server.start()
    uvicorn_server = server._server
    async with httpx.AsyncClient(base_url=server.url) as client:
        request = asyncio.create_task(client.get("/slow"))
        await asyncio.wait_for(entered.wait(), timeout=5)
        stopping = asyncio.create_task(server.stop())
        # Wait (with a deadline) until uvicorn stopped listening: shutdown is under way.
        deadline = asyncio.get_running_loop().time() + 5
        while any(s.is_serving() for s in uvicorn_server.servers):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert not stopping.done()
        release.set()
        response = await request
        await stopping
    assert response.text == "done"
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.get("/livez")
    await server.stop()  # idempotent
