"""Schemathesis against the OpenAPI document the gateway serves, over a real socket.

Every operation is exercised with generated requests (the dev key attached, so generation gets
past authentication); the responses must never be server errors and must match the document
(status codes, content types, headers, schemas). Afterwards every stored event is audited.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from backbone.messaging import apply_streams, load_catalog
from backbone.testing import NatsServer
from event_gateway.testing import GatewayProcess, stored_events

if TYPE_CHECKING:
    from collections.abc import Iterator


async def _apply_streams(url: str) -> None:
    import nats  # noqa: PLC0415

    nc = await nats.connect(url)
    try:
        await apply_streams(nc.jetstream(), load_catalog())
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    with NatsServer(workdir / "nats") as server:
        asyncio.run(_apply_streams(server.url))
        gateway = GatewayProcess(server.url, workdir)
        gateway.start()
        gateway.nats_url = server.url  # type: ignore[attr-defined]
        try:
            yield gateway
        finally:
            gateway.terminate()
            asyncio.run(_audit(server.url))


async def _audit(url: str) -> None:
    # Nothing the fuzzer got stored may break the spec: decoding re-validates every event.
    import nats  # noqa: PLC0415

    nc = await nats.connect(url)
    try:
        for stream in (
            "MCP_EVENTS",
            "CLAUDE_EVENTS",
            "SYSTEM_EVENTS",
            "AI_EVENTS",
            "WEBHOOK_EVENTS",
        ):
            await stored_events(nc, stream)
    finally:
        await nc.close()


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def run_operation(operation, mode, gateway) -> int:
    """Exercise one operation in one generation mode; returns the number of calls made."""
    calls = 0
    # Negative cases may break the document on purpose: only "no 5xx" applies there.
    selected = CHECKS if mode is GenerationMode.POSITIVE else CHECKS[:1]

    @settings(
        max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case):
        nonlocal calls
        calls += 1
        case.call_and_validate(
            base_url=gateway.url, headers=gateway.headers, checks=selected, timeout=10
        )

    try:
        exercise()
    except Unsatisfiable:
        # Operations without parameters or body have no invalid variant to generate.
        if mode is GenerationMode.POSITIVE:
            raise
    return calls


def test_api_conforms_to_its_openapi_document(live_gateway):
    # Driven through hypothesis directly: schemathesis' pytest plugin does not support pytest 9.
    document = httpx.get(live_gateway.url + "/openapi.json", timeout=5).json()
    schema = schemathesis.openapi.from_dict(document).exclude(path="/v1/events/stream")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    calls = sum(
        run_operation(operation, mode, live_gateway)
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    )
    assert calls >= 100
