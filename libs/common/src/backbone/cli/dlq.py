"""`backbone dlq list|replay`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from backbone.cli._common import client, fail, print_json, run
from backbone.messaging import list_dead_letters, replay_dead_letter

app = typer.Typer(help="Inspect and replay dead letters (the DLQ stream).", no_args_is_help=True)


@app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Dead letters with their original subject, delivery count and error."""

    async def go() -> list[dict[str, object]]:
        nc = await client()
        try:
            return [
                letter.to_dict() for letter in await list_dead_letters(nc.jetstream(), limit=limit)
            ]
        finally:
            await nc.close()

    letters = run(go())
    if as_json:
        for letter in letters:
            print_json(letter)
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for column in ("seq", "original subject", "stream:seq", "deliveries", "error", "event id"):
        table.add_column(column)
    for item in letters:
        table.add_row(
            str(item["seq"]),
            str(item["original_subject"]),
            f"{item['original_stream']}:{item['original_seq']}",
            str(item["delivery_count"]),
            f"{item['error_type']}: {item['error_message']}",
            str(item["event_id"]),
        )
    Console().print(table)


@app.command("replay")
def replay_cmd(
    seq: Annotated[
        int | None, typer.Argument(help="DLQ sequence to replay (see `backbone dlq list`).")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Republish dead letters to their original subject (same event id) and remove them from DLQ."""
    if (seq is None) == (not replay_all):
        fail("give a DLQ sequence or --all")

    async def go() -> list[dict[str, object]]:
        nc = await client()
        js = nc.jetstream()
        done: list[dict[str, object]] = []
        try:
            letters = await list_dead_letters(js, limit=1_000_000)
            chosen = letters if replay_all else [x for x in letters if x.seq == seq]
            if not chosen:
                fail(f"no dead letter with sequence {seq}")
            for letter in chosen:
                ack = await replay_dead_letter(js, letter)
                done.append(
                    {
                        "dlq_seq": letter.seq,
                        "subject": letter.original_subject,
                        "stream": ack.stream,
                        "seq": ack.seq,
                        "event_id": letter.event_id,
                    }
                )
        finally:
            await nc.close()
        return done

    for item in run(go()):
        print_json(item)
