"""The local stack's processes under supervisord (the `supervisor` package).

supervisord does what a process manager should (start, stop with signals and timeouts, restart on
exit, log files per process, a control socket); we only write its configuration and talk to it over
XML-RPC on a unix socket, which is also how ``backbone status`` reads it from another terminal.
"""

from __future__ import annotations

import configparser
import http.client
import shlex
import sys
import xmlrpc.client
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from supervisor.xmlrpc import SupervisorTransport

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Program:
    """One supervised process."""

    name: str
    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    autostart: bool = True
    stop_signal: str = "TERM"
    stop_wait_s: int = 30
    priority: int = 100
    directory: Path | None = None


def write_config(
    path: Path, *, programs: list[Program], socket_path: Path, logs_dir: Path, pid_file: Path
) -> None:
    """Write a supervisord.conf running ``programs`` with restarts and per-program logs."""
    config = configparser.RawConfigParser()
    config["unix_http_server"] = {"file": str(socket_path), "chmod": "0700"}
    config["supervisord"] = {
        "logfile": str(logs_dir / "supervisord.log"),
        "pidfile": str(pid_file),
        "nodaemon": "true",
        "silent": "true",
        "loglevel": "info",
        "minfds": "1024",
    }
    config["rpcinterface:supervisor"] = {
        "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
    }
    config["supervisorctl"] = {"serverurl": f"unix://{socket_path}"}
    for program in programs:
        section: dict[str, str] = {
            "command": shlex.join(program.command),
            "autostart": str(program.autostart).lower(),
            # Restart whatever the exit code; supervisord backs off (1 s, 2 s, 3 s...) while a
            # program keeps dying during start-up, and marks it FATAL after `startretries`;
            # the stack's monitor then restarts FATAL programs with a longer exponential backoff.
            "autorestart": "true",
            "startsecs": "2",
            "startretries": "5",
            "stopsignal": program.stop_signal,
            "stopwaitsecs": str(program.stop_wait_s),
            "stopasgroup": "true",
            "killasgroup": "true",
            "priority": str(program.priority),
            "redirect_stderr": "true",
            "stdout_logfile": str(logs_dir / f"{program.name}.log"),
            "stdout_logfile_maxbytes": "20MB",
            "stdout_logfile_backups": "3",
        }
        if program.environment:
            section["environment"] = ",".join(
                f'{key}="{value.replace(chr(34), "")}"'
                for key, value in program.environment.items()
            )
        if program.user:
            section["user"] = program.user
        if program.directory:
            section["directory"] = str(program.directory)
        config[f"program:{program.name}"] = section
    with path.open("w", encoding="utf-8") as handle:
        config.write(handle)


def supervisord_command(config_path: Path) -> list[str]:
    """The supervisord command (from this interpreter's environment)."""
    return [sys.executable, "-m", "supervisor.supervisord", "-c", str(config_path)]


class SupervisorClient:
    """XML-RPC client of a running supervisord over its unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    @property
    def _rpc(self) -> Any:  # noqa: ANN401 - dynamic XML-RPC namespace
        # A fresh transport per call: the transport keeps one HTTP connection whose state breaks
        # after a failed request (e.g. while supervisord is still starting).
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def alive(self) -> bool:
        """Whether supervisord answers."""
        if not self.socket_path.exists():
            return False
        try:
            return cast("str", self._rpc.getState()["statename"]) == "RUNNING"
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            return False

    def processes(self) -> list[dict[str, Any]]:
        """Every program's state (name, statename, pid, start, now, exitstatus, spawnerr...)."""
        return cast("list[dict[str, Any]]", self._rpc.getAllProcessInfo())

    def start(self, name: str, *, wait: bool = True) -> None:
        """Start a program (no error if it already runs)."""
        try:
            self._rpc.startProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def stop(self, name: str) -> None:
        """Stop a program (no error if it is not running)."""
        try:
            self._rpc.stopProcess(name, True)  # noqa: FBT003 - XML-RPC is positional
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def shutdown(self) -> None:
        """Stop every program, then supervisord itself."""
        self._rpc.shutdown()
