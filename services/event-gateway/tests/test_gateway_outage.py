"""JetStream outages: 503 with Retry-After, and nothing reported accepted that is not stored."""

from __future__ import annotations

import asyncio
import time

import orjson

from backbone.resilience import request_all
from event_gateway.testing import auth, gateway_settings, running_gateway, stored_events


def headers(event_id: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-type": "mcp.outage.test",
        "ce-source": "/outage",
        "ce-id": event_id,
        "content-type": "application/json",
        **auth(),
    }


async def poll(predicate, *, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_server_stopped_mid_run_gives_503_and_every_202_is_stored(nats_server, streams):
    settings = gateway_settings(
        nats_server.url,
        publish_timeout_s=0.5,
        breaker={"minimum_calls": 5, "sliding_window_size": 10, "wait_in_open_s": 0.5},
    )
    async with running_gateway(settings) as (client, _):
        accepted: set[str] = set()
        refused: list[tuple[int, str | None]] = []
        stop_at = 40

        async def send(index: int) -> None:
            event_id = f"o-{index}"
            resp = await client.post(
                "/v1/events", content=orjson.dumps({"i": index}), headers=headers(event_id)
            )
            if resp.status_code == 202:
                accepted.add(event_id)
            else:
                refused.append((resp.status_code, resp.headers.get("retry-after")))

        stopper: asyncio.Task[None] | None = None
        for index in range(120):
            if index == stop_at:
                # Stop the server while requests keep coming (the stop itself blocks a thread).
                stopper = asyncio.create_task(asyncio.to_thread(nats_server.stop))
            await send(index)
        assert stopper is not None
        await stopper

        # Fully down: refused at once with Retry-After, not after a publish timeout.
        start = time.monotonic()
        resp = await client.post("/v1/events", content=b"{}", headers=headers("down"))
        assert resp.status_code == 503
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["reason"] == "unavailable"
        assert time.monotonic() - start < 0.5
        assert (await client.get("/readyz")).status_code == 503

        assert len(accepted) >= stop_at - 1
        assert refused, "some requests must have been refused during the outage"
        assert all(status == 503 and retry for status, retry in refused)

        await asyncio.to_thread(nats_server.start)

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await poll(ready)

        async def accepts() -> bool:
            resp = await client.post("/v1/events", content=b"{}", headers=headers("after"))
            return resp.status_code == 202

        await poll(accepts)  # the breaker lets a trial through after its wait and closes

    stored = {event.id for _, event in await stored_events(streams, "MCP_EVENTS")}
    missing = accepted - stored
    assert not missing, f"reported accepted but not stored: {sorted(missing)}"


async def test_open_breaker_answers_503_with_its_remaining_wait(nats_server, streams):
    settings = gateway_settings(nats_server.url, breaker={"wait_in_open_s": 30})
    async with running_gateway(settings) as (client, app):
        app.state.runtime.service.breaker.transition_to_open()
        resp = await client.post("/v1/events", content=b"{}", headers=headers("b1"))
        assert resp.status_code == 503
        assert 25 <= int(resp.headers["retry-after"]) <= 30
        assert "circuit breaker" in resp.json()["detail"]
        batch = [{"specversion": "1.0", "id": "x", "source": "/s", "type": "mcp.b"}]
        resp = await client.post(
            "/v1/events",
            content=orjson.dumps(batch),
            headers={"content-type": "application/cloudevents-batch+json", **auth()},
        )
        assert resp.status_code == 503
    assert await stored_events(streams, "MCP_EVENTS") == []


async def test_in_flight_bound_turns_backpressure_into_503(nats_server, streams):
    settings = gateway_settings(nats_server.url, max_in_flight_events=3)
    async with running_gateway(settings) as (client, _):
        batch = [
            {"specversion": "1.0", "id": str(i), "source": "/s", "type": "mcp.b"} for i in range(4)
        ]
        resp = await client.post(
            "/v1/events",
            content=orjson.dumps(batch),
            headers={"content-type": "application/cloudevents-batch+json", **auth()},
        )
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert "backpressure" in resp.json()["detail"]


async def test_operator_force_opens_the_publish_breaker_over_nats(
    nats_server, nats_client, streams
):
    settings = gateway_settings(nats_server.url, breaker={"wait_in_open_s": 30})
    async with running_gateway(settings) as (client, _app):
        listed = await request_all(nats_client, "event-gateway", "list", expected_replies=1)
        names = {item["name"] for item in listed[0]["instances"]}
        assert "event-gateway-publish" in names
        replies = await request_all(
            nats_client,
            "event-gateway",
            "force_open",
            name="event-gateway-publish",
            expected_replies=1,
        )
        assert replies[0]["ok"] is True
        resp = await client.post("/v1/events", content=b"{}", headers=headers("forced"))
        assert resp.status_code == 503
        await request_all(
            nats_client, "event-gateway", "close", name="event-gateway-publish", expected_replies=1
        )
        resp = await client.post("/v1/events", content=b"{}", headers=headers("closed"))
        assert resp.status_code == 202
