"""``backbone schema``: register, check, list, show schemas and set compatibility modes.

Every command talks to the registry over NATS (``backbone.registry.*``), except
``check --against FILE``, which compares files locally (no NATS needed) for a producer's CI.
Exit codes: 0 success, 1 error or incompatible schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from backbone.cli import _common
from backbone.errors import SchemaError
from backbone.schemas import (
    CompatibilityMode,
    CompatibilityReport,
    IncompatibleSchemaError,
    RegistryClient,
    check_compatibility,
    check_schema_document,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

app = typer.Typer(
    help="Schemas per event type: register, check compatibility, list, show, set modes.",
    no_args_is_help=True,
)

_MODES = ", ".join(m.value for m in CompatibilityMode)
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the registry.", min=0.1)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _read_schema(path: Path) -> Any:  # noqa: ANN401 - any JSON value
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        _common.fail(f"cannot read {path}: {exc.strerror or exc}")
    except orjson.JSONDecodeError as exc:
        _common.fail(f"{path} is not valid JSON: {exc}")


async def _with_client(timeout_s: float, call: Callable[[RegistryClient], Awaitable[Any]]) -> Any:  # noqa: ANN401
    # The one place the CLI connects; _common.client() reads BACKBONE_NATS__* settings.
    nc = await _common.client("backbone-cli-schema")
    try:
        return await call(RegistryClient(nc, timeout_s=timeout_s))
    finally:
        await nc.close()


def _print_changes(changes: list[dict[str, Any]]) -> None:
    for change in changes:
        where = f"v{change['version']} {change['direction']}" if "version" in change else ""
        typer.echo(
            f"  - {change['path']}  [{change['keyword']}]  {change['reason']}"
            + (f"  ({where})" if where else "")
        )


def _print_report(event_type: str, report: CompatibilityReport, *, as_json: bool) -> None:
    if as_json:
        _common.print_json({"type": event_type, **report.to_dict()})
        return
    against = ", ".join(f"v{v}" for v in report.checked_versions) or "no previous version"
    if report.compatible:
        typer.echo(f"compatible: {event_type} under {report.mode.value} (against {against})")
        return
    typer.echo(
        f"INCOMPATIBLE: {event_type} under {report.mode.value} (against {against}), "
        f"{len(report.changes)} breaking change(s):"
    )
    _print_changes([c.to_dict() for c in report.changes])


@app.command("register")
def register_cmd(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="CloudEvents type.")],
    file: Annotated[Path, typer.Argument(help="JSON Schema file.")],
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Register FILE as the next version of TYPE (the same schema returns its version)."""
    schema = _read_schema(file)
    try:
        result = _common.run(_with_client(timeout_s, lambda c: c.register(event_type, schema)))
    except IncompatibleSchemaError as exc:  # pragma: no cover - run() maps it; kept for clarity
        _common.fail(str(exc))
    if as_json:
        _common.print_json(result.to_dict())
    else:
        verb = "registered" if result.created else "already registered"
        typer.echo(f"{verb}: {result.type} v{result.version} ({result.ref})")


@app.command("check")
def check_cmd(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="CloudEvents type.")],
    file: Annotated[Path, typer.Argument(help="Candidate JSON Schema file.")],
    *,
    mode: Annotated[
        str | None, typer.Option(help=f"Mode to apply instead of the type's ({_MODES}).")
    ] = None,
    against: Annotated[
        list[Path] | None,
        typer.Option(help="Check offline against these files (oldest first), not the registry."),
    ] = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Check FILE against TYPE's history; exit 1 with the breaking changes if incompatible."""
    schema = _read_schema(file)
    if against:
        try:
            check_schema_document(schema)
            applied = CompatibilityMode((mode or "BACKWARD").upper())
        except (SchemaError, ValueError) as exc:
            _common.fail(str(exc))
        history = [(i, _read_schema(path)) for i, path in enumerate(against, start=1)]
        report = check_compatibility(schema, history, mode=applied)
    else:
        report = _common.run(
            _with_client(timeout_s, lambda c: c.check(event_type, schema, mode=mode))
        )
    _print_report(event_type, report, as_json=as_json)
    if not report.compatible:
        raise typer.Exit(1)


@app.command("list")
def list_cmd(
    event_type: Annotated[
        str | None, typer.Argument(metavar="[TYPE]", help="List this type's versions.")
    ] = None,
    timeout_s: TimeoutOption = 5.0,
    as_json: JsonOption = False,
) -> None:
    """List registered types, or the versions of TYPE."""
    if event_type is None:
        types = _common.run(_with_client(timeout_s, lambda c: c.list_types()))
        if as_json:
            _common.print_json({"types": types})
        else:
            for name in types:
                typer.echo(name)
        return
    versions = _common.run(_with_client(timeout_s, lambda c: c.list_versions(event_type)))
    if as_json:
        _common.print_json({"type": event_type, "versions": versions})
        return
    for item in versions:
        flag = "  (deleted)" if item["deleted"] else ""
        typer.echo(f"v{item['version']}  {item['created_at']}  {item['fingerprint'][:12]}{flag}")


@app.command("show")
def show_cmd(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="CloudEvents type.")],
    version: Annotated[
        int | None, typer.Option("--version", "-v", help="Version (default: latest).", min=1)
    ] = None,
    timeout_s: TimeoutOption = 5.0,
) -> None:
    """Print a version of TYPE's schema (with its metadata) as JSON."""
    record = _common.run(_with_client(timeout_s, lambda c: c.get(event_type, version)))
    typer.echo(orjson.dumps(record.to_dict(), option=orjson.OPT_INDENT_2).decode())


@app.command("mode")
def mode_cmd(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[TYPE] [MODE]",
            help=f"No argument: show the global mode. TYPE: show its mode. MODE: set the global "
            f"mode. TYPE MODE: set TYPE's mode. Modes: {_MODES}.",
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="Also set the policy: LENIENT (default) or STRICT.")
    ] = None,
    timeout_s: TimeoutOption = 5.0,
) -> None:
    """Show or set the compatibility mode, globally or for one type."""
    items = list(args or [])
    modes = {m.value for m in CompatibilityMode}
    if len(items) > 2:  # noqa: PLR2004 - [TYPE] [MODE]
        _common.fail("expected at most TYPE and MODE")
    event_type: str | None = None
    mode: str | None = None
    if len(items) == 2:  # noqa: PLR2004
        event_type, mode = items
    elif len(items) == 1:
        if items[0].upper() in modes:
            mode = items[0]
        else:
            event_type = items[0]
    if mode is None:
        config = _common.run(_with_client(timeout_s, lambda c: c.get_config(event_type)))
    else:
        new_mode = mode
        config = _common.run(
            _with_client(
                timeout_s, lambda c: c.set_config(event_type, mode=new_mode, policy=policy)
            )
        )
    scope = event_type or "global"
    typer.echo(f"{scope}: {config.mode.value} (policy {config.policy.value}, from {config.source})")
