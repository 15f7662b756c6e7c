"""`backbone up`: nats-server, PostgreSQL and every service as supervised local processes.

State lives under ``.backbone/`` in the working directory: ``nats/`` (JetStream store), ``pg/``
(PostgreSQL cluster), ``logs/`` (one file per process), ``supervisord.conf``, ``supervisor.sock``
and ``stack.json`` (what ``backbone status`` reads from another terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from backbone.errors import BackboneError, ConfigError
from backbone.stack._binaries import (
    init_postgres_cluster,
    nats_server_command,
    postgres_command,
    postgres_dsn,
    postgres_run_user,
)
from backbone.stack._supervisor import Program, SupervisorClient, supervisord_command, write_config

log = logging.getLogger(__name__)

STATE_DIR = Path(".backbone")
NATS_PORT = 4222
NATS_MONITOR_PORT = 8222
POSTGRES_PORT = 54329
#: Shifts every port of the stack (NATS, monitor, PostgreSQL, services), so a second stack (or
#: the end-to-end test) can run beside one on the default ports.
PORT_OFFSET_ENV = "BACKBONE_STACK_PORT_OFFSET"


def port_offset() -> int:
    """The port shift from ``$BACKBONE_STACK_PORT_OFFSET`` (default 0)."""
    raw = os.environ.get(PORT_OFFSET_ENV, "0")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{PORT_OFFSET_ENV} must be an integer, got {raw!r}", variable=PORT_OFFSET_ENV
        ) from None


NATS_HEALTH = "/healthz?js-enabled-only=true"
HTTP_OK = 200
_FATAL_BACKOFF_S = (5.0, 10.0, 20.0, 40.0, 60.0)


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack file."""

    name: str
    command: list[str]
    http_port: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class StackInfo:
    """What a running stack publishes in ``stack.json`` for ``backbone status``."""

    root: str
    pid: int
    started_at: float
    nats_url: str
    nats_monitor_url: str
    postgres_dsn: str
    embedded_postgres: bool
    services: dict[str, int]
    extra: dict[str, str] = field(default_factory=dict)


def repo_root() -> Path:
    """The directory holding ``deploy/`` (the cwd or a parent), where ``.backbone/`` goes."""
    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        if (directory / "deploy" / "streams.yaml").is_file():
            return directory
    raise ConfigError(
        "run `backbone up` inside the Backbone checkout (no deploy/streams.yaml found)"
    )


def load_stack_file(path: Path) -> list[ServiceSpec]:
    """Read the services of ``deploy/stack.yaml``."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    services = []
    for item in raw.get("services", []):
        try:
            services.append(
                ServiceSpec(
                    name=str(item["name"]),
                    command=[str(part) for part in item["command"]],
                    http_port=int(item["http_port"]),
                    env={str(k): str(v) for k, v in (item.get("env") or {}).items()},
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{path}: bad service entry {item!r}: {exc}", variable=str(path)
            ) from exc
    return services


def load_stack_secrets(path: Path) -> list[str]:
    """Names of the generated secrets of ``deploy/stack.yaml``."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [str(name) for name in raw.get("secrets", [])]


def ensure_secret(state_dir: Path, name: str) -> str:
    """The secret ``name`` under ``state_dir``, created once (random, mode 0600)."""
    path = state_dir / name
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"bb_dev_{secrets.token_urlsafe(32)}\n")
    path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def _resolve_command(command: list[str]) -> list[str]:
    # Console scripts live next to this interpreter in the workspace venv.
    script = Path(sys.executable).parent / command[0]
    return [str(script), *command[1:]] if script.exists() else command


def http_status(url: str) -> int | None:
    """The HTTP status of a GET to ``url`` (None when nothing answers within a second)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL we built
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


class Stack:
    """Builds and runs the local stack."""

    def __init__(
        self,
        root: Path,
        *,
        postgres_dsn_override: str | None = None,
        services: list[ServiceSpec] | None = None,
    ) -> None:
        self.root = root
        self.state = root / STATE_DIR
        self.logs = self.state / "logs"
        self.socket = self.state / "supervisor.sock"
        self.config_path = self.state / "supervisord.conf"
        self.info_path = self.state / "stack.json"
        self.external_dsn = postgres_dsn_override
        stack_file = root / "deploy" / "stack.yaml"
        self.services = services if services is not None else load_stack_file(stack_file)
        self.secret_names = load_stack_secrets(stack_file) if stack_file.exists() else []
        offset = port_offset()
        self.nats_port = NATS_PORT + offset
        self.monitor_port = NATS_MONITOR_PORT + offset
        self.postgres_port = POSTGRES_PORT + offset
        self.services = [replace(spec, http_port=spec.http_port + offset) for spec in self.services]
        self.client = SupervisorClient(self.socket)
        self._proc: subprocess.Popen[bytes] | None = None
        self._fatal_since: dict[str, int] = {}
        self.secrets: dict[str, str] = {}

    # -- configuration -------------------------------------------------------------------------
    @property
    def nats_url(self) -> str:
        """Client URL of the stack's nats-server."""
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def dsn(self) -> str:
        """DSN of the stack's PostgreSQL."""
        return self.external_dsn or postgres_dsn(host="127.0.0.1", port=self.postgres_port)

    def service_env(self, spec: ServiceSpec) -> dict[str, str]:
        """Environment of a service process: where NATS and PostgreSQL are, its HTTP port."""
        return {
            "BACKBONE_NATS__SERVERS": self.nats_url,
            "BACKBONE_HTTP__HOST": "127.0.0.1",
            "BACKBONE_HTTP__PORT": str(spec.http_port),
            "BACKBONE_POSTGRES__DSN": self.dsn,
            "BACKBONE_STREAMS_FILE": str(self.root / "deploy" / "streams.yaml"),
            "BACKBONE_LOG_FORMAT": "json",
            "BACKBONE_TELEMETRY__SERVICE_NAME": spec.name,
            "PYTHONUNBUFFERED": "1",
            **{key: value.replace("{state}", str(self.state)) for key, value in spec.env.items()},
        }

    def programs(self) -> list[Program]:
        """nats-server, PostgreSQL (unless external) and the services, in start order."""
        local_conf = self.root / "deploy" / "nats" / "local.conf"
        programs = [
            Program(
                name="nats",
                command=nats_server_command(
                    port=self.nats_port,
                    store_dir=self.state / "nats",
                    monitor_port=self.monitor_port,
                    config_file=local_conf if local_conf.exists() else None,
                ),
                priority=10,
                stop_wait_s=30,
            )
        ]
        if self.external_dsn is None:
            programs.append(
                Program(
                    name="postgres",
                    command=postgres_command(data_dir=self.state / "pg", port=self.postgres_port),
                    user=postgres_run_user(),
                    stop_signal="INT",  # fast shutdown: abort transactions, checkpoint, exit
                    priority=20,
                )
            )
        programs.extend(
            Program(
                name=spec.name,
                command=_resolve_command(spec.command),
                environment=self.service_env(spec),
                autostart=False,  # started once the infrastructure is healthy and provisioned
                priority=100,
                directory=self.root,
            )
            for spec in self.services
        )
        return programs

    # -- lifecycle -----------------------------------------------------------------------------
    def start_infrastructure(self) -> None:
        """Write the config, start supervisord, wait for NATS and PostgreSQL."""
        if self.client.alive():
            raise BackboneError(
                "a stack is already running here: `backbone status`, or `backbone down` first"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.state / "nats").mkdir(parents=True, exist_ok=True)
        self.secrets = {name: ensure_secret(self.state, name) for name in self.secret_names}
        if self.external_dsn is None:
            init_postgres_cluster(self.state / "pg", user=postgres_run_user())
        self.socket.unlink(missing_ok=True)
        write_config(
            self.config_path,
            programs=self.programs(),
            socket_path=self.socket,
            logs_dir=self.logs,
            pid_file=self.state / "supervisord.pid",
        )
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and config
            supervisord_command(self.config_path),
            stdout=(self.logs / "supervisord.out").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop supervisord in order
        )
        try:
            self._wait_infrastructure()
        except BaseException:
            self.shutdown()
            raise

    def _wait_infrastructure(self) -> None:
        self._wait("supervisord", self.client.alive, 15)
        self._wait(
            "nats-server",
            lambda: http_status(f"http://127.0.0.1:{self.monitor_port}{NATS_HEALTH}") == HTTP_OK,
            30,
        )
        self._wait("PostgreSQL", self._postgres_ready, 60)

    def _postgres_ready(self) -> bool:
        import psycopg  # noqa: PLC0415

        try:
            with psycopg.connect(self.dsn, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def _wait(self, what: str, predicate: Any, timeout_s: float) -> None:  # noqa: ANN401
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self._proc is not None and self._proc.poll() is not None:
                raise BackboneError(
                    f"supervisord exited ({self._proc.returncode}); see {self.logs}"
                )
            if time.monotonic() > deadline:
                raise BackboneError(f"{what} not ready after {timeout_s:.0f}s; see {self.logs}/")
            time.sleep(0.1)

    def provision(self) -> list[str]:
        """Apply the streams file and register the seed schemas; returns what was done."""
        import nats  # noqa: PLC0415

        from backbone.stack._provision import provision  # noqa: PLC0415

        async def go() -> list[str]:
            nc = await nats.connect(self.nats_url, connect_timeout=5)
            try:
                return await provision(nc.jetstream(), self.root)
            finally:
                await nc.close()

        return asyncio.run(go())

    def start_services(self) -> None:
        """Start every service (supervisord restarts them when they exit)."""
        for spec in self.services:
            try:
                self.client.start(spec.name, wait=False)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                log.warning("could not start %s: %s", spec.name, exc)

    def write_info(self, extra: dict[str, str] | None = None) -> None:
        """Publish ``stack.json`` for ``backbone status``."""
        info = StackInfo(
            root=str(self.root),
            pid=os.getpid(),
            started_at=time.time(),
            nats_url=self.nats_url,
            nats_monitor_url=f"http://127.0.0.1:{self.monitor_port}",
            postgres_dsn=self.dsn,
            embedded_postgres=self.external_dsn is None,
            services={spec.name: spec.http_port for spec in self.services},
            extra=extra or {},
        )
        self.info_path.write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")

    def restart_fatal(self, now: float) -> None:
        """Restart programs supervisord gave up on, with an exponential backoff."""
        for proc in self.client.processes():
            name = proc["name"]
            if proc["statename"] != "FATAL":
                self._fatal_since.pop(name, None)
                continue
            tries = self._fatal_since.setdefault(name, 0)
            wait_s = _FATAL_BACKOFF_S[min(tries, len(_FATAL_BACKOFF_S) - 1)]
            if now - float(proc.get("stop") or 0) >= wait_s:
                self._fatal_since[name] = tries + 1
                log.warning("restarting %s after it failed to start (attempt %d)", name, tries + 1)
                with contextlib.suppress(Exception):
                    self.client.start(name, wait=False)

    def shutdown(self, *, timeout_s: float = 60.0) -> None:
        """Stop services, then PostgreSQL and nats-server (reverse priority), then supervisord."""
        with contextlib.suppress(Exception):
            self.client.shutdown()
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self.info_path.unlink(missing_ok=True)

    def supervisord_exited(self) -> bool:
        """Whether supervisord died under us."""
        return self._proc is not None and self._proc.poll() is not None


def read_info(root: Path) -> StackInfo | None:
    """``stack.json`` of a running stack, or None."""
    path = root / STATE_DIR / "stack.json"
    try:
        return StackInfo(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def status_rows(root: Path) -> list[dict[str, Any]]:
    """One row per process: state, pid, uptime, health — shared by `up` and `status`."""
    info = read_info(root)
    client = SupervisorClient(root / STATE_DIR / "supervisor.sock")
    if info is None or not client.alive():
        return []
    rows: list[dict[str, Any]] = []
    for proc in client.processes():
        name = proc["name"]
        uptime = (proc["now"] - proc["start"]) if proc["statename"] == "RUNNING" else 0
        row: dict[str, Any] = {
            "name": name,
            "state": proc["statename"],
            "pid": proc["pid"] or None,
            "uptime_s": uptime,
            "health": "-",
            "endpoint": "",
            "log": proc.get("stdout_logfile", ""),
        }
        if name == "nats":
            code = http_status(f"{info.nats_monitor_url}/healthz?js-enabled-only=true")
            row["health"] = "ok" if code == 200 else "down"  # noqa: PLR2004
            row["endpoint"] = info.nats_url
        elif name == "postgres":
            row["health"] = "ok" if proc["statename"] == "RUNNING" else "down"
            row["endpoint"] = info.postgres_dsn
        elif name in info.services:
            port = info.services[name]
            code = http_status(f"http://127.0.0.1:{port}/readyz")
            row["health"] = {200: "ready", 503: "not ready"}.get(code or 0, "down")
            row["endpoint"] = f"http://127.0.0.1:{port}"
        rows.append(row)
    return rows
