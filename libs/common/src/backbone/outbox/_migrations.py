"""Versioned SQL migrations of the outbox, shipped in the package (``migrations/NNNN_name.sql``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import psycopg

from backbone.outbox._errors import MigrationError

if TYPE_CHECKING:
    from psycopg import AsyncConnection, Connection

_FILE_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS backbone_outbox_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
# Concurrent migrators (relays starting at once) queue on this lock, then find the work done.
_LOCK: Final = "SELECT pg_advisory_xact_lock(2980, 0)"
_APPLIED: Final = "SELECT version FROM backbone_outbox_migrations"
_RECORD: Final = "INSERT INTO backbone_outbox_migrations (version, name) VALUES (%s, %s)"


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned schema change.

    Attributes:
        version: Position in the sequence (the file's ``NNNN`` prefix).
        name: The rest of the file name, without ``.sql``.
        sql: The statements, applied in one transaction.
    """

    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this version of Backbone, in order.

    Raises:
        MigrationError: A file does not follow ``NNNN_name.sql`` or two share a version.
    """
    found: dict[int, Migration] = {}
    for entry in resources.files("backbone.outbox").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


def _pending(applied: set[int]) -> list[Migration]:
    return [m for m in migrations() if m.version not in applied]


async def migrate(conn: AsyncConnection[Any]) -> list[Migration]:
    """Apply the migrations that ``conn``'s database lacks, in one transaction.

    Safe to run concurrently from several processes (they serialise on an advisory lock) and
    idempotent (``backbone_outbox_migrations`` records what was applied).

    Returns:
        The migrations applied by this call (empty when the schema was current).

    Raises:
        MigrationError: A migration failed; nothing of this call was applied.
    """
    try:
        async with conn.transaction():
            await conn.execute(_LOCK)
            await conn.execute(_CREATE_TABLE)
            cur = await conn.execute(_APPLIED)
            todo = _pending({int(row[0]) for row in await cur.fetchall()})
            for migration in todo:
                await conn.execute(migration.sql.encode())
                await conn.execute(_RECORD, (migration.version, migration.name))
    except psycopg.Error as exc:
        raise MigrationError(f"outbox migration failed: {exc}") from exc
    return todo


def migrate_sync(conn: Connection[Any]) -> list[Migration]:
    """Blocking twin of :func:`migrate` (for the CLI and synchronous applications)."""
    try:
        with conn.transaction():
            conn.execute(_LOCK)
            conn.execute(_CREATE_TABLE)
            todo = _pending({int(row[0]) for row in conn.execute(_APPLIED).fetchall()})
            for migration in todo:
                conn.execute(migration.sql.encode())
                conn.execute(_RECORD, (migration.version, migration.name))
    except psycopg.Error as exc:
        raise MigrationError(f"outbox migration failed: {exc}") from exc
    return todo
