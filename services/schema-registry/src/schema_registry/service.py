"""Plain request logic of the registry: bytes in, JSON reply or structured error out.

Handlers (``handlers.py``) only move bytes between NATS and :meth:`RegistryService.dispatch`,
so everything here is tested without a broker, over a :class:`~backbone.schemas.SchemaStore`
backed by memory.

Requests and replies are JSON objects. Operations (subject ``backbone.registry.<op>``):

=============  ======================================  =========================================
operation      request                                 reply
=============  ======================================  =========================================
register       ``{type, schema}``                      ``{type, version, fingerprint, created,
                                                       ref}``
get            ``{type, version?}``                    the version record (``schema``,
                                                       ``deleted``...)
list           ``{}`` or ``{type}``                    ``{types: [...]}`` / ``{type, versions}``
check          ``{type, schema, mode?}``               ``{compatible, mode, policy,
                                                       checked_versions, changes: [...]}``
config.get     ``{type?}``                             ``{mode, policy, source}``
config.set     ``{type?, mode, policy?}``              ``{mode, policy, source}``
delete         ``{type, version}``                     the (soft-deleted) version record
validate       ``{type, data, version?}``              ``{valid, type, version, ref, errors}``
=============  ======================================  =========================================

Errors reply ``{"error": {"code", "message", "path", ...}}`` with the micro headers
``Nats-Service-Error-Code`` (HTTP-like status) and ``Nats-Service-Error``; the codes are
``backbone.schemas.ERROR_CODES``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson

from backbone.schemas import (
    InvalidRequestError,
    RegistryError,
    SchemaStore,
)

_log = logging.getLogger(__name__)

OPERATIONS: Final = (
    "register",
    "get",
    "list",
    "check",
    "config.get",
    "config.set",
    "delete",
    "validate",
)

Payload = Mapping[str, Any]


def _field(payload: Payload, name: str) -> Any:  # noqa: ANN401 - any JSON value
    if name not in payload:
        raise InvalidRequestError(f"missing field {name!r}", path=f"$.{name}")
    return payload[name]


def _optional_type(payload: Payload) -> str | None:
    value = payload.get("type")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError("type must be a string", code="invalid_type", path="$.type")
    return value


def _version(payload: Payload, *, required: bool) -> int | None:
    value = payload.get("version")
    if value is None or value == "latest":
        if required:
            raise InvalidRequestError("missing field 'version'", path="$.version")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(
            f"version must be a positive integer or 'latest', got {value!r}", path="$.version"
        )
    return value


class RegistryService:
    """Turns request bytes into reply bytes over a :class:`SchemaStore`.

    Args:
        store: Where schemas live.
        max_request_bytes: Requests above this size are refused before parsing.
    """

    def __init__(self, store: SchemaStore, *, max_request_bytes: int | None = None) -> None:
        self.store = store
        # The envelope ({"type", "schema"}) adds little; leave room for it over the schema limit.
        self.max_request_bytes = max_request_bytes or store.max_schema_bytes * 2 + 4096
        self._operations: dict[str, Callable[[Payload], Awaitable[Any]]] = {
            "register": self.register,
            "get": self.get,
            "list": self.list,
            "check": self.check,
            "config.get": self.config_get,
            "config.set": self.config_set,
            "delete": self.delete,
            "validate": self.validate,
        }

    async def dispatch(self, operation: str, raw: bytes) -> tuple[bytes, RegistryError | None]:
        """Run one request: ``(reply body, None)`` or ``(error body, the error)``.

        Never raises: an unexpected exception becomes an ``internal`` error reply, so one bad
        request cannot take the endpoint down.
        """
        try:
            payload = self._parse(raw)
            result = await self._handler(operation)(payload)
            return (orjson.dumps(result), None)
        except RegistryError as exc:
            return (orjson.dumps(exc.to_payload()), exc)
        except Exception as exc:  # noqa: BLE001 - the reply must go out whatever went wrong
            _log.exception("registry %s failed", operation)
            error = RegistryError(f"internal error: {type(exc).__name__}: {exc}", code="internal")
            return (orjson.dumps(error.to_payload()), error)

    def _handler(self, operation: str) -> Callable[[Payload], Awaitable[Any]]:
        handler = self._operations.get(operation)
        if handler is None:
            raise InvalidRequestError(f"unknown operation {operation!r}")
        return handler

    def _parse(self, raw: bytes) -> Payload:
        if len(raw) > self.max_request_bytes:
            raise InvalidRequestError(
                f"request is {len(raw)} bytes, over the limit of {self.max_request_bytes}",
                code="schema_too_large",
                path="$",
            )
        try:
            payload = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"request is not valid JSON: {exc}", code="invalid_json", path="$"
            ) from exc
        if not isinstance(payload, dict):
            raise InvalidRequestError("request must be a JSON object", path="$")
        return payload

    async def register(self, payload: Payload) -> dict[str, Any]:
        """Register a schema for a type (idempotent)."""
        registered = await self.store.register(_field(payload, "type"), _field(payload, "schema"))
        return registered.to_dict()

    async def get(self, payload: Payload) -> dict[str, Any]:
        """A version, or the latest live one."""
        record = await self.store.get(_field(payload, "type"), _version(payload, required=False))
        return record.to_dict()

    async def list(self, payload: Payload) -> dict[str, Any]:
        """All types, or the versions of one type."""
        event_type = _optional_type(payload)
        if event_type is None:
            return {"types": await self.store.list_types()}
        return {"type": event_type, "versions": await self.store.list_versions(event_type)}

    async def check(self, payload: Payload) -> dict[str, Any]:
        """Compatibility of a candidate, without registering it."""
        report = await self.store.check(
            _field(payload, "type"), _field(payload, "schema"), mode=payload.get("mode")
        )
        return report.to_dict()

    async def config_get(self, payload: Payload) -> dict[str, str]:
        """The compatibility settings in force."""
        return (await self.store.get_config(_optional_type(payload))).to_dict()

    async def config_set(self, payload: Payload) -> dict[str, str]:
        """Set the mode (and policy) globally or per type."""
        config = await self.store.set_config(
            _optional_type(payload), mode=_field(payload, "mode"), policy=payload.get("policy")
        )
        return config.to_dict()

    async def delete(self, payload: Payload) -> dict[str, Any]:
        """Soft-delete a version."""
        version = _version(payload, required=True)
        assert version is not None  # noqa: S101 - required=True guarantees it
        return (await self.store.delete(_field(payload, "type"), version)).to_dict()

    async def validate(self, payload: Payload) -> dict[str, Any]:
        """Validate a payload against a version (or the latest)."""
        return await self.store.validate(
            _field(payload, "type"),
            _field(payload, "data"),
            version=_version(payload, required=False),
        )
