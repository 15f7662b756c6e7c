"""`backbone resilience list|force-open|close|disable|reset|metrics-only --service S [--name N]`.

Also ``backbone resilience set-rate --service S --name N --rate R [--burst B]`` (change a rate
limiter's rate at runtime, e.g. to throttle a producer) and ``restore-rate`` (back to the
configured rate).

Talks to ``backbone.control.<service>.resilience``: every replica of the service answers, and the
command gathers the replies until ``--timeout`` has passed (or ``--replicas`` replies arrived).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from backbone.cli._common import client, fail, print_json, run
from backbone.resilience import request_all

app = typer.Typer(
    name="resilience",
    help="Inspect and operate a service's circuit breakers, bulkheads, limiters and retries.",
    no_args_is_help=True,
)

Service = Annotated[
    str, typer.Option("--service", "-s", help="Service whose replicas should answer.")
]
Name = Annotated[
    str | None, typer.Option("--name", "-n", help="Instance name (default: every instance).")
]
Timeout = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for replies from every replica.")
]
Replicas = Annotated[
    int | None, typer.Option("--replicas", help="Stop waiting once this many replicas replied.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw replies as JSON lines.")]

_STATE_COLOURS = {
    "CLOSED": "green",
    "OPEN": "red",
    "HALF_OPEN": "yellow",
    "FORCED_OPEN": "bold red",
    "DISABLED": "dim",
    "METRICS_ONLY": "cyan",
}


async def gather(
    service: str,
    op: str,
    name: str | None,
    timeout_s: float,
    replicas: int | None,
    *,
    rate_per_s: float | None = None,
    burst: float | None = None,
) -> list[dict[str, Any]]:
    """Send ``op`` and collect every replica's reply."""
    nc = await client("backbone-cli-resilience")
    try:
        return await request_all(
            nc,
            service,
            op,
            name=name,
            timeout_s=timeout_s,
            expected_replies=replicas,
            rate_per_s=rate_per_s,
            burst=burst,
        )
    finally:
        await nc.close()


def _summary(instance: dict[str, Any]) -> str:
    kind = instance.get("kind")
    if kind == "circuitbreaker":
        rate = instance.get("failure_rate", -1.0)
        shown = "n/a" if rate < 0 else f"{rate:.1f}%"
        return (
            f"failure rate {shown}, {instance.get('buffered_calls', 0)} in window, "
            f"{instance.get('not_permitted_calls', 0)} refused"
        )
    if kind == "bulkhead":
        return (
            f"{instance.get('inflight', 0)}/{instance.get('max_concurrent', 0)} in use, "
            f"{instance.get('rejected_calls', 0)} rejected"
        )
    if kind == "ratelimiter":
        configured = instance.get("configured_rate_per_s")
        changed = (
            f" (configured {configured}/s)"
            if configured is not None and configured != instance.get("rate_per_s")
            else ""
        )
        return (
            f"{instance.get('rate_per_s')}/s burst {instance.get('burst')}{changed}, "
            f"{instance.get('rejected_calls', 0)} rejected"
        )
    if kind == "retry":
        return (
            f"{instance.get('retries', 0)} retries, "
            f"{instance.get('budget_exhausted', 0)} budget exhausted"
        )
    if kind == "timelimiter":
        return (
            f"timeout {instance.get('timeout_s')}s, {instance.get('timed_out_calls', 0)} timed out"
        )
    return ""


def _show(replies: list[dict[str, Any]], *, service: str, as_json: bool) -> None:
    if as_json:
        for reply in replies:
            print_json(reply)
    if not replies:
        fail(f"no replica of {service!r} answered (is it running with resilience control on?)")
    if as_json:
        return
    table = Table(title=f"resilience of {service} ({len(replies)} replica(s))")
    for column in ("replica", "kind", "name", "state", "details"):
        table.add_column(column)
    failed = False
    for reply in replies:
        if not reply.get("ok"):
            failed = True
            table.add_row(reply.get("replica", "?"), "", "", "[red]error[/]", reply.get("error"))
            continue
        for instance in reply.get("instances", []):
            state = instance.get("state", "")
            colour = _STATE_COLOURS.get(state, "white")
            table.add_row(
                reply.get("replica", "?"),
                instance.get("kind", ""),
                instance.get("name", ""),
                f"[{colour}]{state}[/]" if state else "",
                _summary(instance),
            )
    Console().print(table)
    if failed:
        raise typer.Exit(1)


def _command(op: str, service: str, name: str | None, timeout_s: float, replicas: int | None,
             *, as_json: bool) -> None:  # fmt: skip
    replies = run(gather(service, op, name, timeout_s, replicas))
    _show(replies, service=service, as_json=as_json)


# One command per control operation; they differ only in the operation and its help text.
_OPERATIONS = (
    ("list", "list", "Every instance of every replica, with state and metrics."),
    (
        "force-open",
        "force_open",
        "Hold circuit breakers FORCED_OPEN (every call refused) until closed or reset.",
    ),
    ("close", "close", "Close circuit breakers with an empty window."),
    ("disable", "disable", "DISABLE circuit breakers: every call permitted, nothing recorded."),
    ("metrics-only", "metrics_only", "METRICS_ONLY: record and emit events but never open."),
    (
        "reset",
        "reset",
        "Reset instances: breakers CLOSED and empty, the rest as configured, buckets full.",
    ),
    ("restore-rate", "restore_rate", "Put rate limiters back to their configured rate and burst."),
)


def _register(command: str, op: str, help_text: str) -> None:
    def handler(
        service: Service,
        name: Name = None,
        timeout_s: Timeout = 1.0,
        replicas: Replicas = None,
        as_json: AsJson = False,
    ) -> None:
        _command(op, service, name, timeout_s, replicas, as_json=as_json)

    handler.__name__ = f"{op}_cmd"
    handler.__doc__ = help_text
    app.command(command, help=help_text)(handler)


for _command_name, _op, _help in _OPERATIONS:
    _register(_command_name, _op, _help)


Rate = Annotated[float, typer.Option("--rate", min=0.0, help="New rate in permits per second.")]
Burst = Annotated[
    float | None,
    typer.Option("--burst", min=1.0, help="New bucket capacity (default: follows the rate)."),
]


@app.command("set-rate")
def set_rate_cmd(
    service: Service,
    rate_per_s: Rate,
    name: Name = None,
    burst: Burst = None,
    timeout_s: Timeout = 1.0,
    replicas: Replicas = None,
    as_json: AsJson = False,
) -> None:
    """Change rate limiters' rate at runtime (throttle a producer); undo with restore-rate."""
    if rate_per_s <= 0:
        fail("--rate must be > 0")
    replies = run(
        gather(service, "set_rate", name, timeout_s, replicas, rate_per_s=rate_per_s, burst=burst)
    )
    _show(replies, service=service, as_json=as_json)
