"""Helpers for testing the gateway (tests and benchmarks): settings, an in-process client.

Needs the dev dependencies (httpx); nothing in the service imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path  # noqa: TC003 - used at run time by GatewayProcess
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbone.events import decode_nats
from backbone.telemetry import setup_telemetry
from event_gateway.app import create_app
from event_gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from nats.aio.client import Client
    from starlette.applications import Starlette

    from backbone.events import CloudEvent

API_KEY = "test-key-all-scopes"
MCP_KEY = "test-key-mcp-only"
# Test secrets (GitHub's documented example secret); never used outside tests.
GITHUB_SECRET = "It's a Secret to Everybody"  # noqa: S105
HOOK_SECRET = "generic-hook-secret"  # noqa: S105


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text`` (how key files store keys)."""
    return hashlib.sha256(text.encode()).hexdigest()


def gateway_settings(nats_url: str, **gateway: object) -> GatewaySettings:
    """Settings for a test gateway: two keys, a GitHub secret, one generic hook."""
    section: dict[str, Any] = {
        "api_keys": [
            {"name": "all", "sha256": sha256_hex(API_KEY), "scopes": ["*"]},
            {"name": "mcp", "sha256": sha256_hex(MCP_KEY), "scopes": ["mcp"]},
        ],
        "github_secret": GITHUB_SECRET,
        "webhooks": {
            "acme": {
                "secret": HOOK_SECRET,
                "signature_header": "X-Acme-Signature",
                "event_header": "X-Acme-Event",
                "id_header": "X-Acme-Delivery",
            }
        },
        "publish_timeout_s": 1.0,
        "publish_attempts": 1,
        "schema_wait_ready_s": 5.0,
    }
    section.update(gateway)
    return GatewaySettings(
        nats={"servers": [nats_url], "reconnect_wait_s": 0.1, "connect_timeout_s": 1.0},
        telemetry={"publish_metrics": False},
        gateway=section,
    )


@contextlib.asynccontextmanager
async def running_gateway(
    settings: GatewaySettings, exporter: InMemorySpanExporter | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    """The app with its lifespan running, and an httpx client talking to it over ASGI."""
    telemetry = setup_telemetry(
        service_name="event-gateway",
        exporter=exporter or InMemorySpanExporter(),
        set_global=False,
    )
    app = create_app(settings, telemetry=telemetry)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, app
    telemetry.shutdown()


def auth(key: str = API_KEY) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"authorization": f"Bearer {key}"}


async def stored_events(nats_client: Client, stream: str) -> list[tuple[int, CloudEvent]]:
    """Every message of ``stream`` decoded as a CloudEvent, with its sequence."""
    js = nats_client.jetstream()
    info = await js.stream_info(stream)
    out: list[tuple[int, CloudEvent]] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(stream, seq)
        out.append((seq, decode_nats(msg.headers, msg.data or b"")))
    return out


def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """``python -m event_gateway`` in a subprocess on a free loopback port (real uvicorn socket).

    Args:
        nats_url: The NATS server.
        workdir: Where the dev key file and the log go.
        env: Extra environment variables (``BACKBONE_GATEWAY__...``).
    """

    def __init__(self, nats_url: str, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = "dev-" + secrets.token_hex(8)
        self.key_file = workdir / "gateway-dev-key"
        self.key_file.write_text(self.key + "\n")
        self.key_file.chmod(0o600)
        self.log_file = workdir / "gateway.log"
        self.env = {
            **os.environ,
            "BACKBONE_NATS__SERVERS": nats_url,
            "BACKBONE_NATS__RECONNECT_WAIT_S": "0.1",
            "BACKBONE_HTTP__HOST": "127.0.0.1",
            "BACKBONE_HTTP__PORT": str(self.port),
            "BACKBONE_GATEWAY__DEV_KEY_FILE": str(self.key_file),
            "BACKBONE_GATEWAY__GITHUB_SECRET": GITHUB_SECRET,
            "BACKBONE_TELEMETRY__PUBLISH_METRICS": "false",
            "BACKBONE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The dev key as an Authorization header."""
        return {"authorization": f"Bearer {self.key}"}

    def start(self, *, timeout_s: float = 20.0) -> None:
        """Start and wait until ``/readyz`` answers 200."""
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "event_gateway"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_file.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=0.5).status_code == 200:  # noqa: PLR2004
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready: {self.log_file.read_text()[-2000:]}")
            time.sleep(0.05)

    def terminate(self, *, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        code = self.proc.returncode
        self.proc = None
        return code
