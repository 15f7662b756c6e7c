"""Errors of the schema registry, its client and the local validator.

::

    SchemaError                               (backbone.errors)
    ├── SchemaValidationError (ValueError)    an event's data does not match its schema
    │   └── MissingSchemaError                no schema for the type, and the policy refuses it
    └── RegistryError                         a registry request failed; ``code`` says why
        ├── InvalidRequestError (ValueError)      invalid_json, invalid_request, invalid_type
        ├── InvalidSchemaError (ValueError)       invalid_schema
        │   └── SchemaTooLargeError               schema_too_large
        ├── SchemaNotFoundError (LookupError)     not_found
        ├── IncompatibleSchemaError               incompatible (carries ``changes``)
        ├── RegistryConflictError                 conflict (too many concurrent writers)
        └── RegistryUnavailableError (TimeoutError)  unavailable (no responder / timeout)

The registry answers with the same ``code`` strings (see :data:`ERROR_CODES`), so a client maps
each reply back to the class above with :func:`error_from_payload`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from backbone.errors import SchemaError

#: Every error code the registry returns, with the HTTP-like status put in the
#: ``Nats-Service-Error-Code`` header (the convention of NATS micro services).
ERROR_CODES: Final[Mapping[str, int]] = {
    "invalid_json": 400,
    "invalid_request": 400,
    "invalid_type": 400,
    "invalid_mode": 400,
    "invalid_schema": 422,
    "schema_too_large": 413,
    "not_found": 404,
    "incompatible": 409,
    "conflict": 503,
    "unavailable": 503,
    "internal": 500,
}


class SchemaValidationError(SchemaError, ValueError):
    """An event's data does not validate against its schema.

    Attributes:
        path: JSON path of the first offending value in the data (``$.severity``).
        schema_ref: The schema used (``backbone://schemas/<type>/<version>``), if any.
        event_type: The event's type.
        errors: Every problem found, as ``{"path", "message"}`` dicts (first one is ``path``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "$",
        schema_ref: str | None = None,
        event_type: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.schema_ref = schema_ref
        self.event_type = event_type
        self.errors = errors if errors is not None else [{"path": path, "message": message}]


class MissingSchemaError(SchemaValidationError):
    """The event's type (or the version its ``dataschema`` names) has no schema, and is refused."""


class RegistryError(SchemaError):
    """A registry request failed.

    Attributes:
        code: Machine-readable error code (a key of :data:`ERROR_CODES`).
        path: JSON path of the offending part of the request or schema, when known.
        details: Extra structured context (e.g. ``changes`` for ``incompatible``).
    """

    default_code = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        path: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.path = path
        self.details: dict[str, Any] = dict(details or {})

    @property
    def status(self) -> int:
        """The HTTP-like status for this code (500 for an unknown one)."""
        return ERROR_CODES.get(self.code, 500)

    def to_payload(self) -> dict[str, Any]:
        """The structured error body the registry replies with."""
        body: dict[str, Any] = {"code": self.code, "message": self.message, "path": self.path}
        body.update(self.details)
        return {"error": body}


class InvalidRequestError(RegistryError, ValueError):
    """The request is not JSON, misses a field, or names an invalid event type or mode."""

    default_code = "invalid_request"


class InvalidSchemaError(RegistryError, ValueError):
    """The document is not a valid JSON Schema of a supported dialect (draft-07, 2020-12)."""

    default_code = "invalid_schema"


class SchemaTooLargeError(InvalidSchemaError):
    """The schema is larger than the registry's size limit."""

    default_code = "schema_too_large"


class SchemaNotFoundError(RegistryError, LookupError):
    """No such event type, or no such version of it."""

    default_code = "not_found"


class IncompatibleSchemaError(RegistryError):
    """The candidate breaks the type's compatibility mode.

    Attributes:
        changes: The breaking changes, as dicts with ``path``, ``keyword``, ``reason``,
            ``direction`` and ``version``.
    """

    default_code = "incompatible"

    @property
    def changes(self) -> list[dict[str, Any]]:
        """The breaking changes that made the registration fail."""
        changes = self.details.get("changes", [])
        return list(changes) if isinstance(changes, list) else []


class RegistryConflictError(RegistryError):
    """Concurrent writers kept winning the revision race; the request may be retried."""

    default_code = "conflict"


class RegistryUnavailableError(RegistryError, TimeoutError):
    """No registry replica answered in time."""

    default_code = "unavailable"


_BY_CODE: Final[Mapping[str, type[RegistryError]]] = {
    "invalid_json": InvalidRequestError,
    "invalid_request": InvalidRequestError,
    "invalid_type": InvalidRequestError,
    "invalid_mode": InvalidRequestError,
    "invalid_schema": InvalidSchemaError,
    "schema_too_large": SchemaTooLargeError,
    "not_found": SchemaNotFoundError,
    "incompatible": IncompatibleSchemaError,
    "conflict": RegistryConflictError,
    "unavailable": RegistryUnavailableError,
}


def error_from_payload(payload: Mapping[str, Any]) -> RegistryError:
    """Rebuild the typed error from a registry error reply ``{"error": {...}}``."""
    body = payload.get("error", payload)
    if not isinstance(body, Mapping):
        return RegistryError(f"malformed error reply: {payload!r}")
    code = str(body.get("code", "internal"))
    details = {k: v for k, v in body.items() if k not in {"code", "message", "path"}}
    cls = _BY_CODE.get(code, RegistryError)
    path = body.get("path")
    return cls(
        str(body.get("message", code)),
        code=code,
        path=str(path) if path is not None else None,
        details=details,
    )
