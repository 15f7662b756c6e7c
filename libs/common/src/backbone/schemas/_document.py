"""Checking schema documents and compiling validators (jsonschema-rs, chosen by measurement).

``bench/bench_schemas.py`` compares jsonschema-rs, fastjsonschema and jsonschema on a typical
1 KB event; jsonschema-rs is the fastest of the three and already a dependency, so it is the one
used everywhere (registry, cache, CLI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import jsonschema_rs

from backbone.schemas._compat import MAX_DEPTH, dialect_of
from backbone.schemas._errors import InvalidSchemaError, SchemaTooLargeError
from backbone.schemas._naming import canonical_json

#: Default size limit of one schema (canonical JSON bytes).
DEFAULT_MAX_SCHEMA_BYTES: Final = 64 * 1024
_MAX_ERRORS: Final = 10


def json_path(parts: Sequence[str | int]) -> str:
    """Render a location (``["a", 0, "b"]``) as a JSON path (``$.a[0].b``)."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier():
            out.append(f".{part}")
        else:
            out.append(f"[{canonical_json(part).decode()}]")
    return "".join(out)


def _pointer_path(parts: Sequence[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _walk_refs(node: Any, location: list[str | int], depth: int) -> None:  # noqa: ANN401 - JSON
    if depth > MAX_DEPTH:
        raise InvalidSchemaError(
            f"schema is nested deeper than {MAX_DEPTH} levels", path=_pointer_path(location)
        )
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in {"$ref", "$dynamicRef"} and isinstance(value, str):
                if not value.startswith("#"):
                    raise InvalidSchemaError(
                        f"only local references are supported, got {key} {value!r} "
                        "(inline the referenced schema under $defs)",
                        path=_pointer_path([*location, key]),
                    )
            elif key not in {"enum", "const", "examples", "default"}:
                _walk_refs(value, [*location, key], depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk_refs(value, [*location, i], depth + 1)


def check_schema_document(
    schema: Any,  # noqa: ANN401 - any JSON value
    *,
    max_bytes: int = DEFAULT_MAX_SCHEMA_BYTES,
) -> None:
    """Check that ``schema`` is a registrable JSON Schema.

    It must be an object or a boolean, within ``max_bytes`` as canonical JSON, of a supported
    dialect (draft-07 or 2020-12, the default), valid against its meta-schema, with local
    ``$ref`` s only, and compilable (valid regexes, resolvable references).

    Raises:
        SchemaTooLargeError: Over the size limit.
        InvalidSchemaError: Anything else; ``path`` locates the problem in the schema.
    """
    size = len(canonical_json(schema))
    if size > max_bytes:
        raise SchemaTooLargeError(
            f"schema is {size} bytes, over the limit of {max_bytes} bytes", path="$"
        )
    if not isinstance(schema, Mapping | bool):
        raise InvalidSchemaError(
            f"a JSON Schema is an object or a boolean, got {type(schema).__name__}", path="$"
        )
    try:
        dialect_of(schema)
    except ValueError as exc:
        raise InvalidSchemaError(str(exc), path="$.$schema") from exc
    _walk_refs(schema, [], 0)
    try:
        jsonschema_rs.meta.validate(schema if isinstance(schema, bool) else dict(schema))
    except jsonschema_rs.ValidationError as exc:
        raise InvalidSchemaError(
            f"not a valid JSON Schema: {exc.message}", path=_pointer_path(exc.instance_path)
        ) from exc
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        raise InvalidSchemaError(f"not a valid JSON Schema: {exc}", path="$") from exc
    compile_validator(schema)


def compile_validator(schema: Any) -> jsonschema_rs.Validator:  # noqa: ANN401 - any JSON Schema
    """Compile a validator, offline (no remote references are ever fetched).

    Raises:
        InvalidSchemaError: When the schema does not compile (bad regex, unresolvable ``$ref``).
    """
    try:
        return jsonschema_rs.validator_for(schema, offline=True)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc).splitlines()[0]
        raise InvalidSchemaError(f"schema does not compile: {message}", path="$") from exc


def validation_errors(
    validator: jsonschema_rs.Validator,
    data: Any,  # noqa: ANN401 - any JSON value
    *,
    limit: int = _MAX_ERRORS,
) -> list[dict[str, str]]:
    """Up to ``limit`` problems of ``data``, as ``{"path", "message"}`` (empty when valid)."""
    errors: list[dict[str, str]] = []
    for error in validator.iter_errors(data):
        errors.append({"path": json_path(error.instance_path), "message": error.message})
        if len(errors) >= limit:
            break
    return errors
