"""Root of the `backbone` CLI; sub-commands register themselves here."""

import typer

app = typer.Typer(
    name="backbone",
    help="Backbone: CloudEvents on NATS JetStream — publish, tail, streams, dead letters, local stack.",
    no_args_is_help=True,
)


def main() -> None:
    """Entry point of the `backbone` console script."""
    app()
