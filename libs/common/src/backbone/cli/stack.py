"""`backbone up|status|down|provision`: the local stack."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from backbone.cli._common import client, console, fail, print_json, run
from backbone.errors import BackboneError
from backbone.stack._up import Stack, read_info, repo_root, status_rows


def _table(rows: list[dict[str, Any]], extra: dict[str, str]) -> Table:
    table = Table(
        title="backbone stack", caption=" · ".join(f"{k}: {v}" for k, v in extra.items()) or None
    )
    for column in ("process", "state", "pid", "uptime", "health", "endpoint"):
        table.add_column(column)
    colours = {
        "RUNNING": "green",
        "STARTING": "yellow",
        "BACKOFF": "yellow",
        "FATAL": "red",
        "EXITED": "red",
        "STOPPED": "dim",
    }
    for row in rows:
        state = row["state"]
        health = row["health"]
        table.add_row(
            row["name"],
            f"[{colours.get(state, 'white')}]{state}[/]",
            str(row["pid"] or "-"),
            f"{int(row['uptime_s'])}s" if row["uptime_s"] else "-",
            f"[{'green' if health in ('ok', 'ready') else 'red'}]{health}[/]",
            row["endpoint"],
        )
    return table


def up(
    postgres_dsn: Annotated[
        str | None,
        typer.Option("--postgres-dsn", help="Use this PostgreSQL instead of the embedded one."),
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option(
            "--live/--no-live", help="Live status table (default: when stdout is a terminal)."
        ),
    ] = None,
) -> None:
    """Start nats-server (JetStream), PostgreSQL and every service; Ctrl-C stops everything.

    State lives in .backbone/ (JetStream store, PostgreSQL data, logs/<process>.log). A service
    that exits is restarted by supervisord; one that keeps failing to start is retried with an
    exponential backoff. `backbone status` shows the same table from another terminal.
    """
    try:
        root = repo_root()
        stack = Stack(root, postgres_dsn_override=postgres_dsn)
        console.print("starting nats-server and PostgreSQL ...")
        stack.start_infrastructure()
    except BackboneError as exc:
        fail(str(exc))
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for line in stack.provision():
            console.print(f"  provisioned {line}")
        extra = {"logs": str(stack.logs), **stack.secrets}
        stack.write_info(extra)
        stack.start_services()
        use_live = sys.stdout.isatty() if live is None else live
        last_states: dict[str, str] = {}
        with (
            Live(
                _table(status_rows(root), extra),
                console=Console(),
                auto_refresh=False,
                transient=False,
            )
            if use_live
            else _nullcontext() as display
        ):
            while not stopping:
                if stack.supervisord_exited():
                    console.print("[red]error:[/] supervisord exited; see .backbone/logs/")
                    break
                rows = status_rows(root)
                stack.restart_fatal(time.time())
                if display is not None:
                    display.update(_table(rows, extra), refresh=True)
                else:
                    for row in rows:
                        state = f"{row['state']}/{row['health']}"
                        if last_states.get(row["name"]) != state:
                            last_states[row["name"]] = state
                            console.print(f"{row['name']}: {state} {row['endpoint']}")
                _sleep_until(lambda: stopping, 1.0)
    except BackboneError as exc:
        console.print(f"[red]error:[/] {exc}")
    finally:
        console.print("stopping the stack ...")
        stack.shutdown()
        console.print("stopped")


class _nullcontext:  # noqa: N801 - mirrors contextlib.nullcontext, typed for `as display`
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _sleep_until(stop: Any, seconds: float) -> None:  # noqa: ANN401
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(0.05)


def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the running local stack: processes, health, endpoints."""
    try:
        root = repo_root()
    except BackboneError as exc:
        fail(str(exc))
    rows = status_rows(root)
    info = read_info(root)
    if not rows or info is None:
        if as_json:
            print_json({"running": False, "processes": []})
            raise typer.Exit(3)
        fail("no stack is running here (start one with `make up` / `backbone up`)", code=3)
    if as_json:
        print_json({"running": True, "processes": rows, **info.extra})
        return
    Console().print(_table(rows, info.extra))


def down() -> None:
    """Stop a stack started in another terminal."""
    from backbone.stack._supervisor import SupervisorClient  # noqa: PLC0415

    root = repo_root()
    sup = SupervisorClient(root / ".backbone" / "supervisor.sock")
    if not sup.alive():
        fail("no stack is running here", code=3)
    info = read_info(root)
    if info is not None:
        import os  # noqa: PLC0415

        try:
            os.kill(info.pid, signal.SIGTERM)  # the `up` process stops everything in order
        except ProcessLookupError:
            sup.shutdown()
    else:
        sup.shutdown()
    console.print("stop requested")


def provision(
    replicas: Annotated[int | None, typer.Option(help="Stream replicas (3 in a cluster).")] = None,
    root: Annotated[
        Path | None, typer.Option(help="Directory holding deploy/ (default: found from the cwd).")
    ] = None,
) -> None:
    """Apply deploy/streams.yaml and register the seed schemas (Compose job, Kubernetes Job)."""
    from backbone.stack._provision import provision as do_provision  # noqa: PLC0415

    base = root or repo_root()

    async def go() -> list[str]:
        nc = await client("backbone-provision")
        try:
            return await do_provision(nc.jetstream(), base, replicas=replicas)
        finally:
            await nc.close()

    for line in run(go()):
        console.print(line)
