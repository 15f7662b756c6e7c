"""`backbone anomaly list|feedback`: recent detector output, and operator feedback on it.

Feedback is published as a CloudEvent ``ai.feedback.false_positive`` or ``ai.feedback.missed``
on AI_EVENTS (a durable, auditable fact). The CLI first looks the alert up in AI_EVENTS, so
the event is self-contained::

    {"alert_id": "...", "entity": "orders", "metric": "handler_latency_p99_ms",
     "score": 0.83, "kind": "false_positive", "note": "...", "by": "alice"}

Every anomaly-detector replica follows ``ai.feedback.>`` (and replays its history on start)
and moves the adaptive threshold of the series it owns. For ``--missed`` on a series that never
alerted, give ``<entity>/<metric>`` instead of an alert id.
"""

from __future__ import annotations

import contextlib
import getpass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final

import nats.errors
import typer
from nats.js import api
from rich.console import Console
from rich.table import Table

from backbone.cli._common import client, fail, print_json, run, settings
from backbone.events import CloudEvent, decode_nats
from backbone.messaging import Publisher, load_catalog, parse_duration_s

if TYPE_CHECKING:
    from nats.js import JetStreamContext

app = typer.Typer(
    help="Anomaly detector output (AI_EVENTS) and operator feedback.", no_args_is_help=True
)

AI_STREAM: Final = "AI_EVENTS"
ANOMALY_TYPE: Final = "ai.anomaly.detected"
FEEDBACK_PREFIX: Final = "ai.feedback."
_FILTERS: Final = {
    "anomaly": "ai.anomaly.>",
    "prediction": "ai.prediction.>",
    "action": "ai.action.>",
    "feedback": "ai.feedback.>",
    "all": "ai.>",
}
_BATCH: Final = 256


async def _scan(
    js: JetStreamContext, *, subject: str, since_s: float, max_messages: int = 1_000_000
) -> list[CloudEvent]:
    """Events of ``subject`` stored in the last ``since_s`` seconds, oldest first."""
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.now(UTC) - timedelta(seconds=since_s),
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subject, stream=AI_STREAM, config=config)
    events: list[CloudEvent] = []
    try:
        while len(events) < max_messages:
            try:
                msgs = await sub.fetch(_BATCH, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for msg in msgs:
                with contextlib.suppress(Exception):
                    events.append(decode_nats(msg.headers or {}, msg.data))
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(AI_STREAM, config.name or "")
    return events


def _summary(event: CloudEvent) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    return {
        "id": event.id,
        "type": event.type,
        "time": event.time.isoformat() if event.time else None,
        "entity": data.get("entity", event.subject),
        "metric": data.get("metric"),
        "score": data.get("score"),
        "confidence": data.get("confidence"),
        "action": data.get("action"),
        "target": data.get("target"),
        "result": data.get("result") or data.get("auto"),
    }


@app.command("list")
def list_cmd(
    kind: Annotated[
        str, typer.Option("--type", help="anomaly, prediction, action, feedback or all.")
    ] = "all",
    since: Annotated[str, typer.Option(help="How far back (e.g. 30m, 24h, 7d).")] = "24h",
    limit: Annotated[int, typer.Option(help="Show the newest N.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Recent anomalies, predictions, suggested/applied actions and feedback, newest last."""
    if kind not in _FILTERS:
        fail(f"--type must be one of {', '.join(_FILTERS)}")
    try:
        since_s = parse_duration_s(since)
    except (ValueError, TypeError) as exc:
        fail(f"--since: {exc}")

    async def go() -> list[dict[str, Any]]:
        nc = await client()
        try:
            events = await _scan(nc.jetstream(), subject=_FILTERS[kind], since_s=since_s)
        finally:
            await nc.close()
        return [_summary(e) for e in events[-limit:]] if limit > 0 else []

    rows = run(go())
    if as_json:
        for row in rows:
            print_json(row)
        return
    table = Table(title=f"AI_EVENTS, last {since} ({len(rows)})")
    for column in ("time", "type", "entity", "metric / action", "score", "result", "id"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["time"]),
            str(row["type"]),
            str(row["entity"]),
            str(row["metric"] or row["action"] or ""),
            "" if row["score"] is None else f"{row['score']:.3f}",
            str(row["result"] or ""),
            str(row["id"]),
        )
    Console().print(table)


@app.command("feedback")
def feedback_cmd(
    alert_id: Annotated[
        str,
        typer.Argument(
            help="Alert id (see `backbone anomaly list`), or <entity>/<metric> with --missed."
        ),
    ],
    false_positive: Annotated[
        bool, typer.Option("--false-positive", help="The alert was noise.")
    ] = False,
    missed: Annotated[
        bool, typer.Option("--missed", help="An anomaly got no (or too late an) alert.")
    ] = False,
    note: Annotated[str, typer.Option(help="Free text kept with the feedback.")] = "",
    within: Annotated[str, typer.Option(help="How far back to look for the alert.")] = "30d",
) -> None:
    """Tell the detector an alert was a false positive, or that it missed an anomaly."""
    if false_positive == missed:
        fail("give exactly one of --false-positive or --missed")
    kind = "false_positive" if false_positive else "missed"
    try:
        within_s = parse_duration_s(within)
    except (ValueError, TypeError) as exc:
        fail(f"--within: {exc}")

    async def go() -> dict[str, Any]:
        nc = await client()
        try:
            js = nc.jetstream()
            alerts = await _scan(js, subject=ANOMALY_TYPE, since_s=within_s)
            found = next((a for a in reversed(alerts) if a.id == alert_id), None)
            data: dict[str, Any]
            if found is not None:
                alert = found.data if isinstance(found.data, dict) else {}
                data = {
                    "alert_id": alert_id,
                    "entity": alert.get("entity", found.subject),
                    "metric": alert.get("metric"),
                    "score": alert.get("series_score", alert.get("score")),
                }
            elif missed and "/" in alert_id:
                entity, _, metric = alert_id.rpartition("/")
                data = {"alert_id": None, "entity": entity, "metric": metric, "score": None}
            else:
                fail(f"no alert {alert_id!r} in {AI_STREAM} within {within}")
            data.update(kind=kind, note=note, by=getpass.getuser())
            event = CloudEvent.create(
                type=FEEDBACK_PREFIX + kind,
                source="/backbone/cli",
                subject=str(data["entity"]),
                data=data,
            )
            result = await Publisher(nc, catalog=load_catalog(settings().streams_file)).publish(
                event
            )
        finally:
            await nc.close()
        return {**result.to_dict(), **data, "type": event.type}

    print_json(run(go()))
