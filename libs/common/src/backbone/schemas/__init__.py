"""Schemas for CloudEvents on NATS: registry client, compatibility checker, local validation.

Public API::

    report = check_compatibility(new, [(1, old)], mode=CompatibilityMode.BACKWARD)
    changes = find_breaking_changes(writer_schema, reader_schema)

    client = RegistryClient(nc)                          # over backbone.registry.* (nats.micro)
    registered = await client.register("mcp.server.error", schema)   # idempotent
    record = await client.get("mcp.server.error")        # latest live version

    cache = await SchemaCache.start(js)                  # follows the `schemas` KV bucket
    cache.validate(event)                                # raises SchemaValidationError

    await register_seed_schemas(js_or_client, "deploy/schemas")

Subjects are the ``SUBJECT_*`` constants; every replica of the registry serves them in the
queue group :data:`REGISTRY_QUEUE_GROUP`. Errors derive from ``backbone.errors.SchemaError``.
"""

from backbone.schemas._cache import CachedSchema, EventLike, SchemaCache, UnknownTypeAction
from backbone.schemas._client import (
    RegistryClient,
    load_seed_schemas,
    register_seed_schemas,
    report_from_dict,
)
from backbone.schemas._compat import (
    BreakingChange,
    CompatibilityReport,
    VersionedChange,
    check_compatibility,
    dialect_of,
    find_breaking_changes,
)
from backbone.schemas._document import (
    DEFAULT_MAX_SCHEMA_BYTES,
    check_schema_document,
    compile_validator,
    json_path,
    validation_errors,
)
from backbone.schemas._errors import (
    ERROR_CODES,
    IncompatibleSchemaError,
    InvalidRequestError,
    InvalidSchemaError,
    MissingSchemaError,
    RegistryConflictError,
    RegistryError,
    RegistryUnavailableError,
    SchemaNotFoundError,
    SchemaTooLargeError,
    SchemaValidationError,
    error_from_payload,
)
from backbone.schemas._naming import (
    REGISTRY_PREFIX,
    REGISTRY_QUEUE_GROUP,
    SCHEMA_BUCKET,
    SUBJECT_CHECK,
    SUBJECT_CONFIG_GET,
    SUBJECT_CONFIG_SET,
    SUBJECT_DELETE,
    SUBJECT_GET,
    SUBJECT_LIST,
    SUBJECT_REGISTER,
    SUBJECT_VALIDATE,
    CompatibilityMode,
    CompatibilityPolicy,
    canonical_json,
    decode_type,
    encode_type,
    fingerprint,
    parse_schema_ref,
    schema_ref,
    schema_url,
)
from backbone.schemas._store import (
    CompatibilityConfig,
    MemorySchemaBucket,
    NatsSchemaBucket,
    RegisteredSchema,
    SchemaBucket,
    SchemaRecord,
    SchemaStore,
    open_schema_bucket,
)

__all__ = [
    "DEFAULT_MAX_SCHEMA_BYTES",
    "ERROR_CODES",
    "REGISTRY_PREFIX",
    "REGISTRY_QUEUE_GROUP",
    "SCHEMA_BUCKET",
    "SUBJECT_CHECK",
    "SUBJECT_CONFIG_GET",
    "SUBJECT_CONFIG_SET",
    "SUBJECT_DELETE",
    "SUBJECT_GET",
    "SUBJECT_LIST",
    "SUBJECT_REGISTER",
    "SUBJECT_VALIDATE",
    "BreakingChange",
    "CachedSchema",
    "CompatibilityConfig",
    "CompatibilityMode",
    "CompatibilityPolicy",
    "CompatibilityReport",
    "EventLike",
    "IncompatibleSchemaError",
    "InvalidRequestError",
    "InvalidSchemaError",
    "MemorySchemaBucket",
    "MissingSchemaError",
    "NatsSchemaBucket",
    "RegisteredSchema",
    "RegistryClient",
    "RegistryConflictError",
    "RegistryError",
    "RegistryUnavailableError",
    "SchemaBucket",
    "SchemaCache",
    "SchemaNotFoundError",
    "SchemaRecord",
    "SchemaStore",
    "SchemaTooLargeError",
    "SchemaValidationError",
    "UnknownTypeAction",
    "VersionedChange",
    "canonical_json",
    "check_compatibility",
    "check_schema_document",
    "compile_validator",
    "decode_type",
    "dialect_of",
    "encode_type",
    "error_from_payload",
    "find_breaking_changes",
    "fingerprint",
    "json_path",
    "load_seed_schemas",
    "open_schema_bucket",
    "parse_schema_ref",
    "register_seed_schemas",
    "report_from_dict",
    "schema_ref",
    "schema_url",
    "validation_errors",
]
