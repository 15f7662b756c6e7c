"""Through a real uvicorn socket: the console entry point, SSE tail with resume, graceful stop."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from event_gateway.testing import GatewayProcess, stored_events


def headers(event_id: str, event_type: str = "mcp.server.error") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "ce-source": "/claude/mcp/filesystem",
        "ce-id": event_id,
        "content-type": "application/json",
    }


@pytest.fixture
def process(nats_server, streams, tmp_path):
    gateway = GatewayProcess(nats_server.url, tmp_path)
    gateway.start()
    yield gateway
    gateway.terminate()


async def read_sse(lines, count: int) -> list[dict[str, str]]:
    """The next ``count`` SSE messages from a line iterator (comments skipped)."""
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with asyncio.timeout(10):
        async for line in lines:
            if not line:
                if current:
                    messages.append(current)
                    current = {}
                    if len(messages) == count:
                        return messages
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return messages


async def test_dev_key_file_publish_and_readiness_over_a_real_socket(process, streams):
    async with httpx.AsyncClient(base_url=process.url) as client:
        ready = await client.get("/readyz")
        assert ready.json()["checks"] == {"nats": True, "streams": True, "schemas": True}
        resp = await client.post(
            "/v1/events", content=b'{"a": 1}', headers={**headers("sock-1"), **process.headers}
        )
        assert resp.status_code == 202, resp.text
        assert resp.json()["stream"] == "MCP_EVENTS"
        unauthenticated = await client.post("/v1/events", content=b"{}", headers=headers("x"))
        assert unauthenticated.status_code == 401
        metrics = (await client.get("/metrics")).text
        assert 'backbone_gateway_requests_total{route="/v1/events",status="202"} 1.0' in metrics
        assert "backbone_publish_latency_seconds_bucket" in metrics
        assert (
            'backbone_events_published_total{stream="MCP_EVENTS",type="mcp.server.error"}'
            in metrics
        )


async def test_tail_streams_live_events_and_resumes_after_last_event_id(process):
    async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:

        async def publish(event_id: str, event_type: str = "mcp.tail.x") -> int:
            resp = await client.post(
                "/v1/events",
                content=orjson.dumps({"id": event_id}),
                headers={**headers(event_id, event_type), **process.headers},
            )
            assert resp.status_code == 202, resp.text
            return int(resp.json()["seq"])

        await publish("before")  # not delivered: the tail starts with new events
        async with client.stream(
            "GET", "/v1/events/stream", params={"subject": "mcp.tail.>"}, headers=process.headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            assert await anext(lines) == ": connected"
            seqs = [
                await publish("t1"),
                await publish("other", "mcp.elsewhere"),
                await publish("t2"),
            ]
            messages = await read_sse(lines, 2)
        assert [int(m["id"]) for m in messages] == [seqs[0], seqs[2]]
        assert [orjson.loads(m["data"])["id"] for m in messages] == ["t1", "t2"]
        assert all(m["event"] == "cloudevent" for m in messages)

        await publish("t3")
        resume = {**process.headers, "last-event-id": messages[0]["id"]}
        async with client.stream(
            "GET", "/v1/events/stream", params={"subject": "mcp.tail.>"}, headers=resume
        ) as response:
            again = await read_sse(response.aiter_lines(), 2)
        assert [orjson.loads(m["data"])["id"] for m in again] == ["t2", "t3"]

        bad = await client.get(
            "/v1/events/stream", params={"subject": ">"}, headers=process.headers
        )
        assert bad.status_code == 422  # spans several streams
        bad = await client.get(
            "/v1/events/stream",
            params={"subject": "mcp.>"},
            headers={**process.headers, "last-event-id": "x"},
        )
        assert bad.status_code == 400


async def test_sigterm_finishes_requests_in_flight_and_exits_cleanly(process, streams):
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:

        async def send(index: int) -> None:
            try:
                resp = await client.post(
                    "/v1/events",
                    content=b"{}",
                    headers={**headers(f"g-{index}"), **process.headers},
                )
            except httpx.TransportError:
                return  # refused after the listener closed: never accepted
            if resp.status_code == 202:
                accepted.append(f"g-{index}")

        tasks = [asyncio.create_task(send(i)) for i in range(200)]
        # Terminate while requests are in flight: after the first 202, before the last one.
        deadline = asyncio.get_running_loop().time() + 10
        while not accepted and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        code = await asyncio.to_thread(process.terminate)
        await asyncio.gather(*tasks)
    assert code == 0, process.log_file.read_text()[-2000:]
    assert accepted
    stored = {event.id for _, event in await stored_events(streams, "MCP_EVENTS")}
    assert set(accepted) <= stored
