"""`backbone publish` and `backbone tail`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from nats.js import api
from nats.js.errors import NotFoundError

from backbone.cli._common import client, console, fail, print_json, run
from backbone.errors import BackboneError, EventError
from backbone.events import CloudEvent, decode_nats, to_json
from backbone.messaging import Publisher, is_subject_pattern, load_catalog


def _parse_data(data: str | None, data_file: Path | None) -> Any:  # noqa: ANN401 - any JSON value
    if data is not None and data_file is not None:
        fail("use --data or --data-file, not both")
    raw = data_file.read_text(encoding="utf-8") if data_file is not None else data
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"--data is not valid JSON: {exc}")


def publish(
    event_type: Annotated[
        str, typer.Option("--type", "-t", help="CloudEvents `type`; also the subject.")
    ],
    source: Annotated[
        str, typer.Option("--source", "-s", help="CloudEvents `source` (URI-reference).")
    ],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Event data as JSON.")] = None,
    data_file: Annotated[
        Path | None, typer.Option("--data-file", help="Read the JSON data from a file.")
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="CloudEvents `subject` attribute.")
    ] = None,
    event_id: Annotated[
        str | None,
        typer.Option("--id", help="Event id (default: a new UUID). Same id twice = duplicate."),
    ] = None,
    dataschema: Annotated[
        str | None, typer.Option("--dataschema", help="Schema URI of the data.")
    ] = None,
    mode: Annotated[str, typer.Option(help="NATS content mode: binary or structured.")] = "binary",
) -> None:
    """Publish one CloudEvent and print where JetStream stored it (after the PubAck).

    Prints one JSON object: id, subject, stream, seq, duplicate. Publishing the same --id with the
    same --source again within the stream's duplicate window reports "duplicate": true and stores
    nothing new.
    """
    if mode not in ("binary", "structured"):
        fail("--mode must be binary or structured")
    payload = _parse_data(data, data_file)
    try:
        event = CloudEvent.create(
            type=event_type,
            source=source,
            data=payload,
            id=event_id,
            subject=subject,
            dataschema=dataschema,
        )
    except (EventError, ValueError) as exc:
        fail(f"invalid event: {exc}")
    content_mode: Literal["binary", "structured"] = "binary" if mode == "binary" else "structured"

    async def go() -> dict[str, object]:
        nc = await client()
        try:
            publisher = Publisher(nc, catalog=load_catalog(), mode=content_mode)
            return (await publisher.publish(event)).to_dict()
        finally:
            await nc.close()

    print_json(run(go()))


def tail(
    pattern: Annotated[
        str, typer.Argument(help="Subject pattern, e.g. 'mcp.>' or 'claude.*.error'.")
    ],
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Replay the stream from its first message.")
    ] = False,
    count: Annotated[
        int | None, typer.Option("--count", "-n", help="Exit after this many events.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One structured-mode CloudEvent JSON per line.")
    ] = False,
    timeout_s: Annotated[
        float | None, typer.Option("--timeout", help="Exit after this many idle seconds.")
    ] = None,
) -> None:
    """Follow events matching PATTERN as they arrive (or from the start of the stream)."""
    catalog = load_catalog()
    if not is_subject_pattern(pattern):
        fail(f"{pattern!r} is not a NATS subject pattern")
    streams = [s.name for s in catalog.streams_covering(pattern)]
    if not streams:
        fail(f"no stream captures {pattern!r}; see `backbone streams status`")
    if len(streams) > 1:
        fail(f"{pattern!r} spans streams {', '.join(streams)}; narrow the pattern to one of them")

    async def go() -> None:
        nc = await client("backbone-tail")
        js = nc.jetstream()
        policy = api.DeliverPolicy.ALL if from_start else api.DeliverPolicy.NEW
        try:
            sub = await js.subscribe(
                pattern, stream=streams[0], ordered_consumer=True, deliver_policy=policy
            )
        except NotFoundError as exc:
            raise BackboneError(
                f"stream {streams[0]} does not exist: run `backbone streams apply`"
            ) from exc
        seen = 0
        try:
            while count is None or seen < count:
                try:
                    msg = await asyncio.wait_for(sub.next_msg(timeout=None), timeout=timeout_s)
                except TimeoutError:
                    break
                seen += 1
                _print_message(msg, as_json=as_json)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await nc.close()

    run(go())


def _print_message(msg: Any, *, as_json: bool) -> None:  # noqa: ANN401 - nats-py Msg
    try:
        event = decode_nats(msg.headers, msg.data)
    except EventError as exc:
        console.print(f"[yellow]skipping non-CloudEvent message on {msg.subject}: {exc}[/]")
        return
    if as_json:
        print(to_json(event).decode())  # noqa: T201 - this is the command's output
        return
    seq = msg.metadata.sequence.stream if msg.reply else "?"
    when = event.time.isoformat() if event.time else "-"
    data = json.dumps(event.data, default=str)[:200]
    print(f"#{seq} {when} {event.type} {event.source} id={event.id} data={data}")  # noqa: T201
