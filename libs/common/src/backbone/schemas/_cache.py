"""Validation at the edge: a local cache of compiled validators that follows the KV bucket.

Which schema an event is validated against:

1. its ``dataschema``, when it names a registry schema (``backbone://schemas/<type>/<version>``
   or ``.../schemas/<type>/versions/<version>``; ``latest`` allowed). A named version the cache
   does not know is refused (:class:`MissingSchemaError`): the producer claims a contract nobody
   registered. Any other ``dataschema`` URI is foreign and ignored;
2. otherwise the latest live version of the event's type;
3. otherwise the latest live version of the longest registered *dotted prefix* of the type:
   a schema registered for ``system.metrics`` covers ``system.metrics.gateway`` (families whose
   last token is a service or a state are registered once, under the family name);
4. otherwise the type has no schema: the per-prefix policy decides (``accept``, the default, or
   ``reject``), and the type is counted in :attr:`SchemaCache.unknown_types`.

Soft-deleted versions stay in the cache (old events may name them) but are never "latest".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from backbone.schemas._document import compile_validator, validation_errors
from backbone.schemas._errors import InvalidSchemaError, MissingSchemaError, SchemaValidationError
from backbone.schemas._naming import SCHEMA_BUCKET, parse_key, parse_schema_ref, schema_ref
from backbone.schemas._store import SchemaRecord, open_schema_bucket

if TYPE_CHECKING:
    from collections.abc import Mapping

    import jsonschema_rs
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

_log = logging.getLogger(__name__)

UnknownTypeAction = Literal["accept", "reject"]


class EventLike(Protocol):
    """What validation reads from an event (``backbone.events.CloudEvent`` has it)."""

    @property
    def type(self) -> str:
        """The CloudEvents ``type``."""

    @property
    def dataschema(self) -> str | None:
        """The CloudEvents ``dataschema``."""

    @property
    def datacontenttype(self) -> str | None:
        """The CloudEvents ``datacontenttype``."""

    @property
    def data(self) -> Any:  # noqa: ANN401 - any payload
        """The event payload."""


@dataclass(frozen=True, slots=True)
class CachedSchema:
    """A compiled version held by the cache.

    Attributes:
        type: The type it is registered under.
        version: Its version.
        fingerprint: SHA-256 of its canonical JSON.
        deleted: Whether it was soft-deleted.
        validator: The compiled validator.
    """

    type: str
    version: int
    fingerprint: str
    deleted: bool
    validator: jsonschema_rs.Validator

    @property
    def ref(self) -> str:
        """Its ``dataschema`` URI."""
        return schema_ref(self.type, self.version)


def _is_json_content(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media == "text/json"


class SchemaCache:
    """Compiled validators for every registered schema, kept current by a KV watch.

    Build it with :meth:`start` (or construct and :meth:`apply` records yourself, offline)::

        cache = await SchemaCache.start(js)
        cache.validate(event)        # raises SchemaValidationError (path, schema_ref)
        await cache.stop()

    Args:
        unknown_type_policy: ``{prefix: "accept"|"reject"}`` for types without a schema; the
            longest matching dotted prefix (or the exact type) wins, ``"*"`` sets the default.
        default_unknown: Action when no prefix matches (``"accept"``).
    """

    def __init__(
        self,
        *,
        unknown_type_policy: Mapping[str, UnknownTypeAction] | None = None,
        default_unknown: UnknownTypeAction = "accept",
    ) -> None:
        policy = dict(unknown_type_policy or {})
        self._default_unknown: UnknownTypeAction = policy.pop("*", default_unknown)
        self._unknown_policy = policy
        self._versions: dict[str, dict[int, CachedSchema]] = {}
        self._latest: dict[str, CachedSchema] = {}
        self._resolved: dict[str, CachedSchema | None] = {}
        self.unknown_types: Counter[str] = Counter()
        """Events seen per type without any schema (accepted or refused)."""
        self.validated = 0
        """Events that passed validation against a schema."""
        self.rejected = 0
        """Events refused (invalid data, or no schema under a ``reject`` policy)."""
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        js: JetStreamContext,
        *,
        bucket: str = SCHEMA_BUCKET,
        wait_ready_s: float | None = 10.0,
        unknown_type_policy: Mapping[str, UnknownTypeAction] | None = None,
        default_unknown: UnknownTypeAction = "accept",
    ) -> SchemaCache:
        """Watch the schema bucket (created when missing) and return the running cache.

        Args:
            js: JetStream context.
            bucket: Schema bucket name.
            wait_ready_s: Wait this long for the initial load (``None``: do not wait; check
                :attr:`ready`).
            unknown_type_policy: See the class.
            default_unknown: See the class.

        Raises:
            TimeoutError: The initial load did not finish within ``wait_ready_s``.
        """
        cache = cls(unknown_type_policy=unknown_type_policy, default_unknown=default_unknown)
        kv = await open_schema_bucket(js, bucket=bucket)
        cache._watcher = await kv.watchall()
        cache._task = asyncio.create_task(cache._follow(cache._watcher), name="schema-cache")
        if wait_ready_s is not None:
            try:
                await asyncio.wait_for(cache._ready.wait(), wait_ready_s)
            except TimeoutError:
                await cache.stop()
                raise
        return cache

    @property
    def ready(self) -> bool:
        """Whether the initial load of the bucket has completed (the cache is warm)."""
        return self._ready.is_set()

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until :attr:`ready`; ``TimeoutError`` after ``timeout_s``."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def stop(self) -> None:
        """Stop following the bucket (the cache keeps answering from what it holds)."""
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # the connection may already be closed
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            self._watcher = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._ready.set()
                continue
            if entry.operation is not None or not entry.value:
                continue  # deletes/purges of whole keys are not part of the registry's protocol
            kind, _, _ = parse_key(entry.key)
            if kind != "version":
                continue
            try:
                self.apply(SchemaRecord.from_dict(orjson.loads(entry.value)))
            except (InvalidSchemaError, ValueError, KeyError) as exc:
                _log.warning("skipping unusable schema record %s: %s", entry.key, exc)

    # -- contents -----------------------------------------------------------------------------

    def apply(self, record: SchemaRecord) -> None:
        """Add or update one version (the watch calls this; usable offline too).

        Raises:
            InvalidSchemaError: When the schema does not compile.
        """
        versions = self._versions.setdefault(record.type, {})
        current = versions.get(record.version)
        if current is not None and current.fingerprint == record.fingerprint:
            validator = current.validator  # only the deleted flag can change: keep the compile
        else:
            validator = compile_validator(record.schema)
        versions[record.version] = CachedSchema(
            record.type, record.version, record.fingerprint, record.deleted, validator
        )
        live = [v for v in versions.values() if not v.deleted]
        if live:
            self._latest[record.type] = max(live, key=lambda v: v.version)
        else:
            self._latest.pop(record.type, None)
        self._resolved.clear()

    def get(self, event_type: str, version: int | None = None) -> CachedSchema | None:
        """A cached version, or the latest live one of exactly this type."""
        if version is None:
            return self._latest.get(event_type)
        return self._versions.get(event_type, {}).get(version)

    @property
    def types(self) -> list[str]:
        """Types with at least one live version."""
        return sorted(self._latest)

    def resolve(self, event_type: str, dataschema: str | None = None) -> CachedSchema | None:
        """The schema an event is validated against (see the module doc), or ``None``.

        Raises:
            MissingSchemaError: ``dataschema`` names a version the cache does not hold.
        """
        if dataschema:
            named = parse_schema_ref(dataschema)
            if named is not None:
                named_type, version = named
                found = self.get(named_type, version)
                if found is None:
                    raise MissingSchemaError(
                        f"dataschema {dataschema!r} names an unknown schema",
                        schema_ref=dataschema,
                        event_type=event_type,
                    )
                return found
        if event_type in self._resolved:
            return self._resolved[event_type]
        found = self._latest.get(event_type)
        prefix = event_type
        while found is None and "." in prefix:
            prefix = prefix.rsplit(".", 1)[0]
            found = self._latest.get(prefix)
        self._resolved[event_type] = found
        return found

    def unknown_action(self, event_type: str) -> UnknownTypeAction:
        """What the policy says for a type without a schema."""
        prefix = event_type
        while True:
            if prefix in self._unknown_policy:
                return self._unknown_policy[prefix]
            if "." not in prefix:
                return self._default_unknown
            prefix = prefix.rsplit(".", 1)[0]

    # -- validation ---------------------------------------------------------------------------

    def validate(self, event: EventLike) -> None:
        """Validate an event's data locally (no round trip).

        Raises:
            SchemaValidationError: The data does not match; ``path`` and ``schema_ref`` say
                where and against what.
            MissingSchemaError: No schema and the type's policy is ``reject``, or the
                ``dataschema`` names an unknown version.
        """
        self.validate_data(
            event.type,
            event.data,
            dataschema=event.dataschema,
            datacontenttype=event.datacontenttype,
        )

    def validate_data(
        self,
        event_type: str,
        data: Any,  # noqa: ANN401 - any payload
        *,
        dataschema: str | None = None,
        datacontenttype: str | None = None,
    ) -> None:
        """Like :meth:`validate`, from the parts of an event."""
        try:
            schema = self.resolve(event_type, dataschema)
        except MissingSchemaError:
            self.rejected += 1
            raise
        if schema is None:
            self.unknown_types[event_type] += 1
            if self.unknown_action(event_type) == "reject":
                self.rejected += 1
                raise MissingSchemaError(
                    f"no schema registered for {event_type!r} and its policy is reject",
                    event_type=event_type,
                )
            return
        if isinstance(data, bytes | bytearray | memoryview):
            data = self._decode_binary(bytes(data), event_type, schema, datacontenttype)
        validator = schema.validator
        if validator.is_valid(data):  # fast path: no error objects built
            self.validated += 1
            return
        self.rejected += 1
        errors = validation_errors(validator, data)
        first = errors[0] if errors else {"path": "$", "message": "invalid"}
        raise SchemaValidationError(
            f"{event_type} data does not match {schema.ref}: {first['path']}: {first['message']}",
            path=first["path"],
            schema_ref=schema.ref,
            event_type=event_type,
            errors=errors,
        )

    def _decode_binary(
        self, raw: bytes, event_type: str, schema: CachedSchema, content_type: str | None
    ) -> Any:  # noqa: ANN401 - any JSON value
        if _is_json_content(content_type):
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
        self.rejected += 1
        raise SchemaValidationError(
            f"{event_type} has a schema ({schema.ref}) but its data is not JSON"
            f" (datacontenttype {content_type!r}, {len(raw)} bytes,"
            f" starts {base64.b64encode(raw[:12]).decode()})",
            schema_ref=schema.ref,
            event_type=event_type,
        )
