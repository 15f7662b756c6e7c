"""Helpers shared by the CLI commands: settings, connections, output, errors."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from backbone.errors import BackboneError
from backbone.messaging import connect
from backbone.settings import BackboneSettings, load_settings

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from nats.aio.client import Client

T = TypeVar("T")
console = Console(stderr=True)


def settings() -> BackboneSettings:
    """Settings from the environment; a bad value exits with a message naming the variable."""
    try:
        return load_settings()
    except BackboneError as exc:
        fail(str(exc))


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print an error to stderr and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning Backbone errors into a clean message and exit code 1."""
    try:
        return asyncio.run(coro)
    except BackboneError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def client(name: str = "backbone-cli") -> Client:
    """A NATS connection from settings; fails fast (no endless reconnects) for CLI use."""
    nats_settings = settings().nats.model_copy(update={"max_reconnect_attempts": 3})
    return await connect(nats_settings, name=name)


def print_json(obj: Any) -> None:  # noqa: ANN401 - anything JSON-serialisable
    """One JSON object on one line to stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
