"""Client of the schema registry over NATS request/reply (subjects ``backbone.registry.*``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from backbone.schemas._compat import BreakingChange, CompatibilityReport, VersionedChange
from backbone.schemas._errors import RegistryError, RegistryUnavailableError, error_from_payload
from backbone.schemas._naming import (
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
)
from backbone.schemas._store import (
    CompatibilityConfig,
    RegisteredSchema,
    SchemaRecord,
    SchemaStore,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"
DEFAULT_TIMEOUT_S: Final = 5.0


def report_from_dict(data: Mapping[str, Any]) -> CompatibilityReport:
    """Rebuild a :class:`CompatibilityReport` from its JSON form."""
    return CompatibilityReport(
        mode=CompatibilityMode(data["mode"]),
        policy=CompatibilityPolicy(data["policy"]),
        compatible=bool(data["compatible"]),
        checked_versions=tuple(int(v) for v in data.get("checked_versions", [])),
        changes=tuple(
            VersionedChange(
                int(c["version"]),
                str(c["direction"]),
                BreakingChange(str(c["path"]), str(c["keyword"]), str(c["reason"])),
            )
            for c in data.get("changes", [])
        ),
    )


class RegistryClient:
    """Talks to any replica of the schema registry.

    Args:
        nc: A connected NATS client.
        timeout_s: How long to wait for a reply.

    Every method raises a :class:`RegistryError` subclass mapped from the reply's ``code``
    (:class:`SchemaNotFoundError`, :class:`IncompatibleSchemaError`, ...), and
    :class:`RegistryUnavailableError` when no replica answers.
    """

    def __init__(self, nc: Client, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def request(self, subject: str, payload: Mapping[str, Any]) -> Any:  # noqa: ANN401
        """Send one request and return the decoded reply, raising the mapped error."""
        from nats import errors as nats_errors  # noqa: PLC0415 - keep nats out of import time

        try:
            msg = await self.nc.request(subject, orjson.dumps(payload), timeout=self.timeout_s)
        except nats_errors.NoRespondersError as exc:
            raise RegistryUnavailableError(f"no schema registry is listening on {subject}") from exc
        except nats_errors.TimeoutError as exc:
            raise RegistryUnavailableError(
                f"schema registry did not answer on {subject} within {self.timeout_s:g}s"
            ) from exc
        try:
            body = orjson.loads(msg.data) if msg.data else {}
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"registry sent a reply that is not JSON: {exc}") from exc
        if (msg.headers or {}).get(ERROR_CODE_HEADER) or (
            isinstance(body, dict) and "error" in body and len(body) == 1
        ):
            raise error_from_payload(body if isinstance(body, dict) else {})
        return body

    async def register(self, event_type: str, schema: Any) -> RegisteredSchema:  # noqa: ANN401
        """Register a schema (idempotent: the same schema returns the same version)."""
        body = await self.request(SUBJECT_REGISTER, {"type": event_type, "schema": schema})
        return RegisteredSchema.from_dict(body)

    async def get(self, event_type: str, version: int | None = None) -> SchemaRecord:
        """A version, or the latest live one."""
        body = await self.request(SUBJECT_GET, {"type": event_type, "version": version})
        return SchemaRecord.from_dict(body)

    async def list_types(self) -> list[str]:
        """Every registered type."""
        body = await self.request(SUBJECT_LIST, {})
        return [str(t) for t in body["types"]]

    async def list_versions(self, event_type: str) -> list[dict[str, Any]]:
        """Every version of a type, with fingerprint, creation time and deleted flag."""
        body = await self.request(SUBJECT_LIST, {"type": event_type})
        return list(body["versions"])

    async def check(
        self,
        event_type: str,
        schema: Any,  # noqa: ANN401 - any JSON Schema
        *,
        mode: CompatibilityMode | str | None = None,
    ) -> CompatibilityReport:
        """Check a candidate's compatibility without registering it."""
        payload: dict[str, Any] = {"type": event_type, "schema": schema}
        if mode is not None:
            payload["mode"] = str(mode)
        return report_from_dict(await self.request(SUBJECT_CHECK, payload))

    async def get_config(self, event_type: str | None = None) -> CompatibilityConfig:
        """The compatibility settings in force for a type (or the global ones)."""
        body = await self.request(SUBJECT_CONFIG_GET, {"type": event_type})
        return CompatibilityConfig(
            CompatibilityMode(body["mode"]), CompatibilityPolicy(body["policy"]), body["source"]
        )

    async def set_config(
        self,
        event_type: str | None,
        *,
        mode: CompatibilityMode | str,
        policy: CompatibilityPolicy | str | None = None,
    ) -> CompatibilityConfig:
        """Set the mode (and optionally the policy) globally (``None``) or for one type."""
        payload: dict[str, Any] = {"type": event_type, "mode": str(mode)}
        if policy is not None:
            payload["policy"] = str(policy)
        body = await self.request(SUBJECT_CONFIG_SET, payload)
        return CompatibilityConfig(
            CompatibilityMode(body["mode"]), CompatibilityPolicy(body["policy"]), body["source"]
        )

    async def delete(self, event_type: str, version: int) -> SchemaRecord:
        """Soft-delete a version."""
        body = await self.request(SUBJECT_DELETE, {"type": event_type, "version": version})
        return SchemaRecord.from_dict(body)

    async def validate(
        self,
        event_type: str,
        data: Any,  # noqa: ANN401 - any JSON value
        *,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Validate a payload on the registry: ``{"valid", "errors", "version", "ref"}``."""
        body = await self.request(
            SUBJECT_VALIDATE, {"type": event_type, "data": data, "version": version}
        )
        return dict(body)


def load_seed_schemas(directory: str | Path) -> list[tuple[str, Any]]:
    """Read ``<type>.json`` files (the file name without ``.json`` is the event type), sorted."""
    return [
        (path.name.removesuffix(".json"), orjson.loads(path.read_bytes()))
        for path in sorted(Path(directory).glob("*.json"))
    ]


async def register_seed_schemas(
    client_or_js: RegistryClient | JetStreamContext,
    directory: str | Path,
) -> list[RegisteredSchema]:
    """Register every schema of ``directory`` (``deploy/schemas``); safe to run at every start.

    Args:
        client_or_js: A :class:`RegistryClient` (through a running registry) or a JetStream
            context (straight into the KV bucket, with the same checks, for provisioning
            before the registry runs).
        directory: Folder of ``<event type>.json`` files.

    Returns:
        One result per file; ``created`` is False for schemas already registered.

    Raises:
        RegistryError: A seed is invalid or incompatible with what is registered.
    """
    seeds = load_seed_schemas(directory)
    results = []
    if isinstance(client_or_js, RegistryClient):
        for event_type, schema in seeds:
            results.append(await client_or_js.register(event_type, schema))
        return results
    store = await SchemaStore.open(client_or_js)
    for event_type, schema in seeds:
        results.append(await store.register(event_type, schema))
    return results
