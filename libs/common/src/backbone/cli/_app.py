"""Root of the `backbone` CLI; sub-commands register themselves here."""

from __future__ import annotations

import contextlib
import importlib
import logging

import typer

from backbone.cli import dlq, events, stack, streams

app = typer.Typer(
    name="backbone",
    help="Backbone: CloudEvents on NATS JetStream — publish, tail, streams, dead letters, "
    "local stack.\n\n"
    "Connection settings come from BACKBONE_* variables (e.g. BACKBONE_NATS__SERVERS=nats://127.0.0.1:4222).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(events.publish)
app.command()(events.tail)
app.command()(stack.up)
app.command()(stack.status)
app.command()(stack.down)
app.command()(stack.provision)
app.add_typer(streams.app, name="streams")
app.add_typer(dlq.app, name="dlq")

# Sub-apps of optional parts: present when their module is.
for _module, _name in (
    ("backbone.cli.schema", "schema"),
    ("backbone.cli.resilience", "resilience"),
    ("backbone.cli.outbox", "outbox"),
    ("backbone.cli.anomaly", "anomaly"),
):
    with contextlib.suppress(ImportError):
        app.add_typer(importlib.import_module(_module).app, name=_name)


def main() -> None:
    """Entry point of the `backbone` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
