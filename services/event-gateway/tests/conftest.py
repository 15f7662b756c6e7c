"""Fixtures of the event-gateway tests: a real nats-server with the declared streams, the app."""

from __future__ import annotations

import pytest

from backbone.messaging import apply_streams, load_catalog
from event_gateway.testing import gateway_settings, running_gateway


@pytest.fixture
async def streams(nats_client):
    """Every stream of deploy/streams.yaml, applied to the test server."""
    await apply_streams(nats_client.jetstream(), load_catalog())
    return nats_client


@pytest.fixture
async def gateway(nats_server, streams):
    """(client, app) for a gateway with default test settings."""
    async with running_gateway(gateway_settings(nats_server.url)) as pair:
        yield pair
