"""The registry's storage logic over a JetStream KV bucket (see :mod:`._naming` for the keys).

Consistency without locks: a version exists once its key ``<type>.v<N>`` has been *created*
(``kv.create`` fails if the key exists), so exactly one writer wins each version number. The
``<type>.latest`` index (highest version, fingerprint -> version) is updated afterwards with a
revision check, and anyone who finds a version above the index rolls the index forward first:
a crash between the two writes, or a concurrent winner, never blocks or forks the history.
Compatibility is always checked against what was read in the same attempt; when the create
loses the race, the attempt starts over and checks against the winner. Registration is
idempotent: a schema whose canonical JSON matches a live version returns that version.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from backbone.schemas._compat import CompatibilityReport, check_compatibility
from backbone.schemas._document import (
    DEFAULT_MAX_SCHEMA_BYTES,
    check_schema_document,
    compile_validator,
    validation_errors,
)
from backbone.schemas._errors import (
    IncompatibleSchemaError,
    InvalidRequestError,
    RegistryConflictError,
    SchemaNotFoundError,
)
from backbone.schemas._naming import (
    SCHEMA_BUCKET,
    CompatibilityMode,
    CompatibilityPolicy,
    config_key,
    fingerprint,
    latest_key,
    parse_key,
    schema_ref,
    validate_event_type,
    version_key,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import jsonschema_rs
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

#: History kept per key; the same value as the ``schemas`` bucket in deploy/streams.yaml.
SCHEMA_BUCKET_HISTORY: Final = 16
DEFAULT_MAX_ATTEMPTS: Final = 32


class KeyMissingError(Exception):
    """The key does not exist (or was deleted)."""


class RevisionMismatchError(Exception):
    """A create/update lost a race: the key's revision is not the one expected."""


@dataclass(frozen=True, slots=True)
class BucketEntry:
    """A value and the revision it was read at."""

    value: bytes
    revision: int


class SchemaBucket(Protocol):
    """The key-value operations the store needs (a JetStream KV bucket, or memory in tests)."""

    async def get(self, key: str) -> BucketEntry:
        """Latest value; raises :class:`KeyMissingError`."""

    async def create(self, key: str, value: bytes) -> int:
        """Write only if absent; raises :class:`RevisionMismatchError`."""

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        """Write only if the key is at revision ``last``; raises :class:`RevisionMismatchError`."""

    async def put(self, key: str, value: bytes) -> int:
        """Write unconditionally."""

    async def keys(self) -> list[str]:
        """Every live key (empty list when there is none)."""


class NatsSchemaBucket:
    """:class:`SchemaBucket` over a nats-py KV bucket, mapping its errors at this boundary."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, key: str) -> BucketEntry:
        from nats.js import errors as js_errors  # noqa: PLC0415 - keep nats out of import time

        try:
            entry = await self.kv.get(key)
        except js_errors.KeyNotFoundError as exc:
            raise KeyMissingError(key) from exc
        return BucketEntry(entry.value or b"", entry.revision or 0)

    async def create(self, key: str, value: bytes) -> int:
        from nats.js import errors as js_errors  # noqa: PLC0415

        try:
            return int(await self.kv.create(key, value))
        except js_errors.KeyWrongLastSequenceError as exc:
            raise RevisionMismatchError(key) from exc

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        from nats.js import errors as js_errors  # noqa: PLC0415

        try:
            return int(await self.kv.update(key, value, last=last))
        except js_errors.KeyWrongLastSequenceError as exc:
            raise RevisionMismatchError(key) from exc

    async def put(self, key: str, value: bytes) -> int:
        return int(await self.kv.put(key, value))

    async def keys(self) -> list[str]:
        from nats.js import errors as js_errors  # noqa: PLC0415

        try:
            return list(await self.kv.keys())
        except js_errors.NoKeysError:
            return []


class MemorySchemaBucket:
    """In-memory :class:`SchemaBucket` with the same revision semantics (for tests, offline use)."""

    def __init__(self) -> None:
        self._data: dict[str, BucketEntry] = {}
        self._revision = 0

    def _next(self, key: str, value: bytes) -> int:
        self._revision += 1
        self._data[key] = BucketEntry(value, self._revision)
        return self._revision

    async def get(self, key: str) -> BucketEntry:
        await asyncio.sleep(0)  # a real bucket yields here, letting racers interleave
        if key not in self._data:
            raise KeyMissingError(key)
        return self._data[key]

    async def create(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        if key in self._data:
            raise RevisionMismatchError(key)
        return self._next(key, value)

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        await asyncio.sleep(0)
        current = self._data.get(key)
        if (current.revision if current else 0) != last:
            raise RevisionMismatchError(key)
        return self._next(key, value)

    async def put(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        return self._next(key, value)

    async def keys(self) -> list[str]:
        await asyncio.sleep(0)
        return sorted(self._data)


async def open_schema_bucket(js: JetStreamContext, *, bucket: str = SCHEMA_BUCKET) -> KeyValue:
    """Bind to the schema bucket, creating it (file storage, history) when it does not exist.

    ``backbone streams apply`` normally creates it from deploy/streams.yaml; creating it here
    too lets a registry, a cache or seed registration start first without failing.
    """
    from nats.js import api  # noqa: PLC0415
    from nats.js import errors as js_errors  # noqa: PLC0415

    try:
        return await js.key_value(bucket)
    except js_errors.BucketNotFoundError:
        return await js.create_key_value(
            api.KeyValueConfig(
                bucket=bucket,
                description="Schema registry storage (versions, modes)",
                history=SCHEMA_BUCKET_HISTORY,
                storage=api.StorageType.FILE,
            )
        )


@dataclass(frozen=True, slots=True)
class SchemaRecord:
    """One stored version of a type's schema.

    Attributes:
        type: The event type.
        version: Version number, from 1.
        schema: The JSON Schema document.
        fingerprint: SHA-256 of its canonical JSON.
        created_at: When it was registered (RFC 3339, UTC).
        deleted: Whether it was soft-deleted (kept for events that name it, never "latest").
    """

    type: str
    version: int
    schema: Any
    fingerprint: str
    created_at: str
    deleted: bool = False

    @property
    def ref(self) -> str:
        """Its ``dataschema`` URI, ``backbone://schemas/<type>/<version>``."""
        return schema_ref(self.type, self.version)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also the stored form)."""
        return {
            "type": self.type,
            "version": self.version,
            "schema": self.schema,
            "fingerprint": self.fingerprint,
            "created_at": self.created_at,
            "deleted": self.deleted,
            "ref": self.ref,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchemaRecord:
        """Parse the stored form."""
        return cls(
            type=str(data["type"]),
            version=int(data["version"]),
            schema=data["schema"],
            fingerprint=str(data["fingerprint"]),
            created_at=str(data.get("created_at", "")),
            deleted=bool(data.get("deleted", False)),
        )


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """Outcome of a registration.

    Attributes:
        type: The event type.
        version: The version the schema has (new or existing).
        fingerprint: SHA-256 of the schema's canonical JSON.
        created: False when the same schema was already registered (idempotent call).
    """

    type: str
    version: int
    fingerprint: str
    created: bool

    @property
    def ref(self) -> str:
        """The ``dataschema`` URI of this version."""
        return schema_ref(self.type, self.version)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "type": self.type,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "ref": self.ref,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegisteredSchema:
        """Parse the JSON form."""
        return cls(
            type=str(data["type"]),
            version=int(data["version"]),
            fingerprint=str(data["fingerprint"]),
            created=bool(data["created"]),
        )


@dataclass(frozen=True, slots=True)
class CompatibilityConfig:
    """The compatibility settings in force for a type.

    Attributes:
        mode: The compatibility mode.
        policy: The open-content-model policy.
        source: Where it comes from: ``"type"``, ``"global"`` or ``"default"``.
    """

    mode: CompatibilityMode = CompatibilityMode.BACKWARD
    policy: CompatibilityPolicy = CompatibilityPolicy.LENIENT
    source: str = "default"

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"mode": self.mode.value, "policy": self.policy.value, "source": self.source}


@dataclass(slots=True)
class _Index:
    version: int = 0
    fingerprints: dict[str, int] = field(default_factory=dict)
    revision: int = 0  # 0: the index key does not exist yet

    def encode(self, event_type: str) -> bytes:
        return orjson.dumps(
            {"type": event_type, "version": self.version, "fingerprints": self.fingerprints}
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_mode(value: object) -> CompatibilityMode:
    """Parse a mode name (case-insensitive); ``InvalidRequestError`` (invalid_mode) otherwise."""
    try:
        return CompatibilityMode(str(value).upper())
    except ValueError:
        names = ", ".join(m.value for m in CompatibilityMode)
        raise InvalidRequestError(
            f"unknown compatibility mode {value!r}; expected one of {names}",
            code="invalid_mode",
            path="$.mode",
        ) from None


def parse_policy(value: object) -> CompatibilityPolicy:
    """Parse a policy name (case-insensitive); ``InvalidRequestError`` (invalid_mode) otherwise."""
    try:
        return CompatibilityPolicy(str(value).upper())
    except ValueError:
        raise InvalidRequestError(
            f"unknown compatibility policy {value!r}; expected LENIENT or STRICT",
            code="invalid_mode",
            path="$.policy",
        ) from None


def checked_type(event_type: object) -> str:
    """The event type, or ``InvalidRequestError`` (invalid_type) naming the problem."""
    try:
        return validate_event_type(event_type)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), code="invalid_type", path="$.type") from exc


class SchemaStore:
    """Registry operations over a :class:`SchemaBucket`; shared by the service and provisioning.

    Args:
        bucket: The storage (``NatsSchemaBucket(kv)`` or ``MemorySchemaBucket()``).
        max_schema_bytes: Size limit of one schema (canonical JSON).
        max_attempts: How many lost revision races a registration tolerates before giving up.
    """

    def __init__(
        self,
        bucket: SchemaBucket,
        *,
        max_schema_bytes: int = DEFAULT_MAX_SCHEMA_BYTES,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.bucket = bucket
        self.max_schema_bytes = max_schema_bytes
        self.max_attempts = max_attempts
        self._validators: dict[str, jsonschema_rs.Validator] = {}

    @classmethod
    async def open(cls, js: JetStreamContext, **kwargs: Any) -> SchemaStore:  # noqa: ANN401
        """A store over the JetStream schema bucket (created when missing)."""
        return cls(NatsSchemaBucket(await open_schema_bucket(js)), **kwargs)

    # -- reads --------------------------------------------------------------------------------

    async def _read_json(self, key: str) -> tuple[Any, int] | None:
        try:
            entry = await self.bucket.get(key)
        except KeyMissingError:
            return None
        return (orjson.loads(entry.value), entry.revision)

    async def _index(self, event_type: str) -> _Index:
        found = await self._read_json(latest_key(event_type))
        if found is None:
            return _Index()
        data, revision = found
        return _Index(int(data["version"]), dict(data.get("fingerprints", {})), revision)

    async def _record(self, event_type: str, version: int) -> tuple[SchemaRecord, int] | None:
        found = await self._read_json(version_key(event_type, version))
        if found is None:
            return None
        return (SchemaRecord.from_dict(found[0]), found[1])

    async def _roll_forward(self, event_type: str, index: _Index) -> bool:
        """Bring the index up to versions created above it; True if it changed."""
        probe = await self._record(event_type, index.version + 1)
        if probe is None:
            return False
        record, _ = probe
        while True:
            nxt = await self._record(event_type, record.version + 1)
            if nxt is None:
                break
            record = nxt[0]
        await self._update_index(event_type, record)
        return True

    async def _fresh_index(self, event_type: str) -> _Index:
        index = await self._index(event_type)
        if await self._roll_forward(event_type, index):
            index = await self._index(event_type)
        return index

    async def _update_index(self, event_type: str, record: SchemaRecord) -> None:
        """Merge ``record`` into the index with revision checks (retrying lost races)."""
        for _ in range(self.max_attempts):
            index = await self._index(event_type)
            if index.version >= record.version and record.fingerprint in index.fingerprints:
                return
            # Fill any version between the index and the record (their writers may be slow).
            for version in range(index.version + 1, record.version + 1):
                found = await self._record(event_type, version)
                if found is not None:
                    index.fingerprints[found[0].fingerprint] = version
            index.version = max(index.version, record.version)
            try:
                if index.revision == 0:
                    await self.bucket.create(latest_key(event_type), index.encode(event_type))
                else:
                    await self.bucket.update(
                        latest_key(event_type), index.encode(event_type), last=index.revision
                    )
            except RevisionMismatchError:
                continue
            return
        raise RegistryConflictError(f"could not update the index of {event_type!r}")

    async def live_history(self, event_type: str) -> list[SchemaRecord]:
        """Every live (not soft-deleted) version, oldest first."""
        index = await self._fresh_index(event_type)
        records = [await self._record(event_type, v) for v in range(1, index.version + 1)]
        return [r for r, _ in filter(None, records) if not r.deleted]

    async def _latest_live(self, event_type: str, index: _Index) -> SchemaRecord | None:
        for version in range(index.version, 0, -1):
            found = await self._record(event_type, version)
            if found is not None and not found[0].deleted:
                return found[0]
        return None

    async def get(self, event_type: str, version: int | None = None) -> SchemaRecord:
        """A version (soft-deleted ones too, flagged), or the latest live one.

        Raises:
            SchemaNotFoundError: Unknown type, unknown version, or no live version left.
        """
        event_type = checked_type(event_type)
        if version is not None:
            found = await self._record(event_type, version)
            if found is None:
                raise SchemaNotFoundError(
                    f"{event_type!r} has no version {version}", path="$.version"
                )
            return found[0]
        index = await self._fresh_index(event_type)
        latest = await self._latest_live(event_type, index)
        if latest is None:
            raise SchemaNotFoundError(f"no schema registered for {event_type!r}", path="$.type")
        return latest

    async def list_types(self) -> list[str]:
        """Every type with at least one version, sorted."""
        types = set()
        for key in await self.bucket.keys():
            kind, event_type, _ = parse_key(key)
            if kind in {"version", "latest"} and event_type is not None:
                types.add(event_type)
        return sorted(types)

    async def list_versions(self, event_type: str) -> list[dict[str, Any]]:
        """``{"version", "fingerprint", "created_at", "deleted"}`` of every version of a type.

        Raises:
            SchemaNotFoundError: Unknown type.
        """
        event_type = checked_type(event_type)
        index = await self._fresh_index(event_type)
        versions = []
        for version in range(1, index.version + 1):
            found = await self._record(event_type, version)
            if found is not None:
                record = found[0]
                versions.append(
                    {
                        "version": record.version,
                        "fingerprint": record.fingerprint,
                        "created_at": record.created_at,
                        "deleted": record.deleted,
                    }
                )
        if not versions:
            raise SchemaNotFoundError(f"no schema registered for {event_type!r}", path="$.type")
        return versions

    # -- config -------------------------------------------------------------------------------

    async def get_config(self, event_type: str | None = None) -> CompatibilityConfig:
        """The settings in force for a type (its own, else the global ones, else the default)."""
        scopes = [(event_type, "type"), (None, "global")] if event_type else [(None, "global")]
        for scope, source in scopes:
            found = await self._read_json(config_key(scope))
            if found is not None:
                data = found[0]
                return CompatibilityConfig(
                    parse_mode(data.get("mode", "BACKWARD")),
                    parse_policy(data.get("policy", "LENIENT")),
                    source,
                )
        return CompatibilityConfig()

    async def set_config(
        self,
        event_type: str | None,
        *,
        mode: CompatibilityMode | str,
        policy: CompatibilityPolicy | str | None = None,
    ) -> CompatibilityConfig:
        """Set the mode (and optionally the policy) globally (``None``) or for one type."""
        if event_type is not None:
            event_type = checked_type(event_type)
        parsed_mode = parse_mode(mode)
        if policy is None:
            current = await self.get_config(event_type)
            parsed_policy = current.policy
        else:
            parsed_policy = parse_policy(policy)
        await self.bucket.put(
            config_key(event_type),
            orjson.dumps({"mode": parsed_mode.value, "policy": parsed_policy.value}),
        )
        return CompatibilityConfig(parsed_mode, parsed_policy, "type" if event_type else "global")

    # -- writes -------------------------------------------------------------------------------

    async def check(
        self,
        event_type: str,
        schema: Any,  # noqa: ANN401 - any JSON Schema
        *,
        mode: CompatibilityMode | str | None = None,
    ) -> CompatibilityReport:
        """Check a candidate against the type's live history (compatible when there is none)."""
        event_type = checked_type(event_type)
        check_schema_document(schema, max_bytes=self.max_schema_bytes)
        config = await self.get_config(event_type)
        applied = parse_mode(mode) if mode is not None else config.mode
        history = await self.live_history(event_type)
        return check_compatibility(
            schema,
            [(r.version, r.schema) for r in history],
            mode=applied,
            policy=config.policy,
        )

    async def register(self, event_type: str, schema: Any) -> RegisteredSchema:  # noqa: ANN401
        """Register a schema; the same schema again returns its existing version.

        Raises:
            InvalidRequestError: Invalid event type.
            InvalidSchemaError: Not a valid or supported JSON Schema (or over the size limit).
            IncompatibleSchemaError: Breaks the type's compatibility mode; ``changes`` says how.
            RegistryConflictError: Lost the revision race ``max_attempts`` times in a row.
        """
        event_type = checked_type(event_type)
        check_schema_document(schema, max_bytes=self.max_schema_bytes)
        fp = fingerprint(schema)
        for _ in range(self.max_attempts):
            index = await self._index(event_type)
            if await self._roll_forward(event_type, index):
                continue
            existing = index.fingerprints.get(fp)
            if existing is not None:
                found = await self._record(event_type, existing)
                if found is not None and not found[0].deleted:
                    return RegisteredSchema(event_type, existing, fp, created=False)
            await self._ensure_compatible(event_type, schema, index)
            record = SchemaRecord(event_type, index.version + 1, schema, fp, _now())
            payload = orjson.dumps(record.to_dict())
            try:
                await self.bucket.create(version_key(event_type, record.version), payload)
            except RevisionMismatchError:
                continue  # another writer took this number: start over against it
            await self._update_index(event_type, record)
            return RegisteredSchema(event_type, record.version, fp, created=True)
        raise RegistryConflictError(
            f"gave up registering {event_type!r} after {self.max_attempts} lost races"
        )

    async def _ensure_compatible(
        self,
        event_type: str,
        schema: Any,  # noqa: ANN401
        index: _Index,
    ) -> None:
        config = await self.get_config(event_type)
        if config.mode is CompatibilityMode.NONE or index.version == 0:
            return
        records = [await self._record(event_type, v) for v in range(1, index.version + 1)]
        history = [(r.version, r.schema) for r, _ in filter(None, records) if not r.deleted]
        report = check_compatibility(schema, history, mode=config.mode, policy=config.policy)
        if not report.compatible:
            first = report.changes[0].change
            raise IncompatibleSchemaError(
                f"schema for {event_type!r} is not {config.mode.value}-compatible: "
                f"{len(report.changes)} breaking change(s), first at {first.path}: {first.reason}",
                path=first.path,
                details={
                    "mode": config.mode.value,
                    "policy": config.policy.value,
                    "changes": [c.to_dict() for c in report.changes],
                },
            )

    async def delete(self, event_type: str, version: int) -> SchemaRecord:
        """Soft-delete a version: kept for events that name it, skipped as latest and in checks.

        Raises:
            SchemaNotFoundError: Unknown type or version.
        """
        event_type = checked_type(event_type)
        for _ in range(self.max_attempts):
            found = await self._record(event_type, version)
            if found is None:
                raise SchemaNotFoundError(
                    f"{event_type!r} has no version {version}", path="$.version"
                )
            record, revision = found
            if record.deleted:
                return record
            deleted = SchemaRecord(
                record.type,
                record.version,
                record.schema,
                record.fingerprint,
                record.created_at,
                deleted=True,
            )
            with contextlib.suppress(RevisionMismatchError):
                await self.bucket.update(
                    version_key(event_type, version),
                    orjson.dumps(deleted.to_dict()),
                    last=revision,
                )
                return deleted
        raise RegistryConflictError(f"could not delete {event_type!r} version {version}")

    # -- validation ---------------------------------------------------------------------------

    async def validate(
        self,
        event_type: str,
        data: Any,  # noqa: ANN401 - any JSON value
        *,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Validate a payload against a version (or the latest): ``{"valid", "errors", ...}``."""
        record = await self.get(event_type, version)
        validator = self._validators.get(record.fingerprint)
        if validator is None:
            validator = compile_validator(record.schema)
            self._validators[record.fingerprint] = validator
        errors = validation_errors(validator, data)
        return {
            "valid": not errors,
            "type": record.type,
            "version": record.version,
            "ref": record.ref,
            "errors": errors,
        }
