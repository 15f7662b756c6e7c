"""`backbone outbox migrate | status | dead list | dead retry`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from backbone.cli._common import fail, print_json, run
from backbone.errors import BackboneError
from backbone.outbox import OutboxSettings, list_dead, migrate, outbox_status, retry_dead
from backbone.settings import load_settings

if TYPE_CHECKING:
    from psycopg import AsyncConnection

app = typer.Typer(
    help="Transactional outbox: schema, status, dead rows (PostgreSQL: BACKBONE_POSTGRES__DSN).",
    no_args_is_help=True,
)
dead_app = typer.Typer(help="Rows the relay gave up on, with the error.", no_args_is_help=True)
app.add_typer(dead_app, name="dead")

DsnOption = Annotated[
    str | None, typer.Option("--dsn", help="PostgreSQL DSN (default: BACKBONE_POSTGRES__DSN).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


def _dsn(dsn: str | None) -> str:
    if dsn:
        return dsn
    try:
        return load_settings(OutboxSettings).postgres.dsn_value()
    except BackboneError as exc:
        fail(str(exc))


async def _connect(dsn: str) -> AsyncConnection[Any]:
    import psycopg  # noqa: PLC0415 - only the outbox commands need the driver

    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        fail(f"cannot connect to PostgreSQL: {str(exc).strip()}")


@app.command("migrate")
def migrate_cmd(dsn: DsnOption = None) -> None:
    """Create or upgrade the outbox tables (idempotent; relays also do it at start)."""

    async def go() -> list[dict[str, object]]:
        async with await _connect(_dsn(dsn)) as conn:
            return [{"version": m.version, "name": m.name} for m in await migrate(conn)]

    applied = run(go())
    print_json({"applied": applied})


@app.command("status")
def status_cmd(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Backlog, age of the oldest unpublished row, dead rows, live relays, owned partitions."""

    async def go() -> dict[str, Any]:
        async with await _connect(_dsn(dsn)) as conn:
            return (await outbox_status(conn)).to_dict()

    status = run(go())
    if as_json:
        print_json(status)
        return
    table = Table(title="outbox")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in status.items():
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


@dead_app.command("list")
def dead_list_cmd(
    dsn: DsnOption = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Dead rows, oldest first, with the error that stopped them."""

    async def go() -> list[dict[str, Any]]:
        async with await _connect(_dsn(dsn)) as conn:
            return [row.to_dict() for row in await list_dead(conn, limit=limit)]

    rows = run(go())
    if as_json:
        for row in rows:
            print_json(row)
        return
    table = Table(title=f"outbox dead rows ({len(rows)})")
    for column in ("id", "subject", "event id", "key", "attempts", "error", "dead at"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["subject"]),
            str(row["event_id"]),
            str(row["ordering_key"]),
            str(row["attempts"]),
            str(row["error"]),
            str(row["dead_at"]),
        )
    Console().print(table)


@dead_app.command("retry")
def dead_retry_cmd(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead row ids (see `dead list`).")] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Retry every dead row.")] = False,
    dsn: DsnOption = None,
) -> None:
    """Put dead rows back into the outbox (new ids, same Nats-Msg-Id); the relay publishes them."""
    if bool(ids) == retry_all:
        fail("give dead row ids or --all")

    async def go() -> list[int]:
        async with await _connect(_dsn(dsn)) as conn:
            return await retry_dead(conn, None if retry_all else ids)

    new_ids = run(go())
    if not new_ids and not retry_all:
        fail(f"no dead row with id {', '.join(map(str, ids or []))}")
    print_json({"retried": len(new_ids), "outbox_ids": new_ids})
