"""`backbone streams apply|status`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from backbone.cli._common import client, print_json, run
from backbone.messaging import apply_streams, load_catalog

app = typer.Typer(
    help="Create, update and inspect the streams declared in deploy/streams.yaml.",
    no_args_is_help=True,
)


@app.command("apply")
def apply_cmd(
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Streams file (default: deploy/streams.yaml)."),
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(help="Override replicas (3 in a cluster).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
) -> None:
    """Create or update every stream and KV bucket; idempotent; prints what changed."""
    catalog = load_catalog(file)

    async def go() -> list[Any]:
        nc = await client()
        try:
            return await apply_streams(nc.jetstream(), catalog, replicas=replicas)
        finally:
            await nc.close()

    changes = run(go())
    if as_json:
        print_json(
            [{"kind": c.kind, "name": c.name, "action": c.action, "diff": c.diff} for c in changes]
        )
        return
    out = Console()
    for change in changes:
        colour = {"created": "green", "updated": "yellow", "unchanged": "dim"}[change.action]
        out.print(f"[{colour}]{change.action:9}[/] {change.kind:6} {change.name}")
        for key, (old, new) in change.diff.items():
            out.print(f"           {key}: {old!r} -> {new!r}")


async def stream_status_rows() -> list[dict[str, Any]]:
    """Messages, bytes, consumers and pending counts of each declared stream."""
    catalog = load_catalog()
    nc = await client()
    js = nc.jetstream()
    rows: list[dict[str, Any]] = []
    try:
        for spec in catalog.streams:
            try:
                info = await js.stream_info(spec.name)
            except NotFoundError:
                rows.append({"stream": spec.name, "exists": False})
                continue
            consumers = await js.consumers_info(spec.name)
            rows.append(
                {
                    "stream": spec.name,
                    "exists": True,
                    "subjects": list(spec.subjects),
                    "messages": info.state.messages,
                    "bytes": info.state.bytes,
                    "first_seq": info.state.first_seq,
                    "last_seq": info.state.last_seq,
                    "consumers": {
                        c.name: {
                            "pending": c.num_pending,
                            "ack_pending": c.num_ack_pending,
                            "redelivered": c.num_redelivered,
                        }
                        for c in consumers
                    },
                }
            )
    finally:
        await nc.close()
    return rows


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Messages, bytes, consumers and their pending counts for every declared stream."""
    rows = run(stream_status_rows())
    if as_json:
        print_json(rows)
        return
    table = Table(title="streams")
    for column in ("stream", "subjects", "messages", "bytes", "consumers (pending/ack-pending)"):
        table.add_column(column)
    for row in rows:
        if not row["exists"]:
            table.add_row(row["stream"], "-", "missing", "-", "run `backbone streams apply`")
            continue
        consumers = (
            ", ".join(
                f"{n} ({c['pending']}/{c['ack_pending']})" for n, c in row["consumers"].items()
            )
            or "-"
        )
        table.add_row(
            row["stream"],
            " ".join(row["subjects"]),
            str(row["messages"]),
            str(row["bytes"]),
            consumers,
        )
    Console().print(table)
