"""Names shared by the registry, its client and the cache: subjects, KV keys, schema references.

KV layout (bucket :data:`SCHEMA_BUCKET`, history kept so every change can be audited)::

    <enc(type)>.v<N>         one immutable version record (soft-delete flips ``deleted``)
    <enc(type)>.latest       index: highest version and fingerprint -> version (rolled forward)
    _config                  global compatibility config
    _config.<enc(type)>      per-type compatibility config

KV keys allow only ``[-/_=.a-zA-Z0-9]`` with non-empty dotted tokens, while a CloudEvents type
may hold any character. :func:`encode_type` keeps letters, digits, ``-`` and inner single dots,
and writes every other UTF-8 byte as ``_XX`` (upper-case hex); ``_`` itself is escaped, so the
encoding is injective and a key starting with ``_config`` can never be a type's key.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import orjson

#: JetStream KV bucket holding every schema, index and config record.
SCHEMA_BUCKET: Final = "schemas"

#: Subject prefix of the registry's request/reply API.
REGISTRY_PREFIX: Final = "backbone.registry"
SUBJECT_REGISTER: Final = f"{REGISTRY_PREFIX}.register"
SUBJECT_GET: Final = f"{REGISTRY_PREFIX}.get"
SUBJECT_LIST: Final = f"{REGISTRY_PREFIX}.list"
SUBJECT_CHECK: Final = f"{REGISTRY_PREFIX}.check"
SUBJECT_CONFIG_GET: Final = f"{REGISTRY_PREFIX}.config.get"
SUBJECT_CONFIG_SET: Final = f"{REGISTRY_PREFIX}.config.set"
SUBJECT_DELETE: Final = f"{REGISTRY_PREFIX}.delete"
SUBJECT_VALIDATE: Final = f"{REGISTRY_PREFIX}.validate"
#: Queue group every replica joins, so each request is answered by exactly one of them.
REGISTRY_QUEUE_GROUP: Final = "backbone-registry"

SCHEMA_URI_SCHEME: Final = "backbone"
CONFIG_KEY: Final = "_config"
MAX_TYPE_LENGTH: Final = 255

_KEEP = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_VERSION_TOKEN = re.compile(r"^v([1-9][0-9]*)$")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")


class CompatibilityMode(StrEnum):
    """Confluent's compatibility modes, with their meaning.

    BACKWARD: readers on the new schema read data written with the previous one.
    FORWARD: readers on the previous schema read data written with the new one.
    FULL: both. The ``_TRANSITIVE`` variants check against every live version, not only the
    latest. NONE: no check.
    """

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def transitive(self) -> bool:
        """Whether every previous live version is checked (not only the latest)."""
        return self.value.endswith("_TRANSITIVE")

    @property
    def backward(self) -> bool:
        """Whether new readers must read old data."""
        return self.value.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        """Whether old readers must read new data."""
        return self.value.startswith(("FORWARD", "FULL"))


class CompatibilityPolicy(StrEnum):
    """How to treat an optional property added to an open content model (see README).

    STRICT: JSON Schema's literal reading. The old schema allowed *any* value under the new
    name (``additionalProperties`` defaults to true), so constraining it is breaking.
    LENIENT (default): new property names are assumed fresh: writers did not send undeclared
    properties under a name a later version declares. Adding an optional property is then
    compatible in every direction, which is what producers expect.
    """

    LENIENT = "LENIENT"
    STRICT = "STRICT"


def validate_event_type(event_type: object) -> str:
    """Return ``event_type`` if it can name a schema, else raise ``ValueError`` saying why."""
    if not isinstance(event_type, str) or not event_type:
        msg = "event type must be a non-empty string"
        raise ValueError(msg)
    if len(event_type) > MAX_TYPE_LENGTH:
        msg = f"event type is longer than {MAX_TYPE_LENGTH} characters"
        raise ValueError(msg)
    if any(ord(ch) < 0x20 for ch in event_type):  # noqa: PLR2004 - ASCII control characters
        msg = "event type contains control characters"
        raise ValueError(msg)
    return event_type


def encode_type(event_type: str) -> str:
    """Encode an event type into a KV-key-safe string (see the module docstring)."""
    out: list[str] = []
    last = len(event_type) - 1
    for i, ch in enumerate(event_type):
        if ch in _KEEP or (
            ch == "." and 0 < i < last and event_type[i - 1] != "." and event_type[i + 1] != "."
        ):
            out.append(ch)
        else:
            out.extend(f"_{byte:02X}" for byte in ch.encode())
    return "".join(out)


def decode_type(encoded: str) -> str:
    """Inverse of :func:`encode_type`."""
    raw = _ESCAPE.sub(lambda m: f"%{m.group(1)}", encoded.replace("%", "%25"))
    return unquote(raw, errors="strict")


def version_key(event_type: str, version: int) -> str:
    """KV key of one version record."""
    return f"{encode_type(event_type)}.v{version}"


def latest_key(event_type: str) -> str:
    """KV key of a type's index record."""
    return f"{encode_type(event_type)}.latest"


def config_key(event_type: str | None) -> str:
    """KV key of the global (``None``) or a per-type compatibility config."""
    return CONFIG_KEY if event_type is None else f"{CONFIG_KEY}.{encode_type(event_type)}"


def parse_key(key: str) -> tuple[str, str | None, int | None]:
    """Classify a KV key.

    Returns:
        ``("version", type, N)``, ``("latest", type, None)``, ``("config", type-or-None, None)``
        or ``("other", None, None)``.
    """
    if key == CONFIG_KEY:
        return ("config", None, None)
    if key.startswith(CONFIG_KEY + "."):
        return ("config", decode_type(key[len(CONFIG_KEY) + 1 :]), None)
    head, _, last = key.rpartition(".")
    if not head:
        return ("other", None, None)
    if last == "latest":
        return ("latest", decode_type(head), None)
    match = _VERSION_TOKEN.match(last)
    if match:
        return ("version", decode_type(head), int(match.group(1)))
    return ("other", None, None)


def schema_ref(event_type: str, version: int | None = None) -> str:
    """The ``dataschema`` URI of a version (or of the latest): ``backbone://schemas/<type>/<v>``."""
    return f"{SCHEMA_URI_SCHEME}://schemas/{quote(event_type, safe='')}/{version or 'latest'}"


def schema_url(base_url: str, event_type: str, version: int) -> str:
    """The registry's URL form of a version: ``<base>/schemas/<type>/versions/<v>``."""
    return f"{base_url.rstrip('/')}/schemas/{quote(event_type, safe='')}/versions/{version}"


def parse_schema_ref(ref: str) -> tuple[str, int | None] | None:  # noqa: PLR0911 - one per form
    """Parse a ``dataschema`` naming a registry schema into ``(type, version-or-None)``.

    Accepted forms: ``backbone://schemas/<type>/<version|latest>`` and any http(s) URL whose path
    ends with ``/schemas/<type>/versions/<version|latest>``; ``<type>`` is percent-encoded.
    Anything else returns ``None`` (a foreign schema URI: the cache then uses the latest).
    """
    parts = urlsplit(ref)
    if parts.scheme == SCHEMA_URI_SCHEME and parts.netloc == "schemas":
        segments = parts.path.strip("/").split("/")
        if len(segments) != 2:  # noqa: PLR2004 - <type>/<version>
            return None
        raw_type, raw_version = segments
    elif parts.scheme in {"http", "https"}:
        segments = parts.path.rstrip("/").split("/")
        if len(segments) < 4 or segments[-4] != "schemas" or segments[-2] != "versions":  # noqa: PLR2004
            return None
        raw_type, raw_version = segments[-3], segments[-1]
    else:
        return None
    event_type = unquote(raw_type)
    if not event_type:
        return None
    if raw_version == "latest":
        return (event_type, None)
    if raw_version.isdigit() and int(raw_version) > 0:
        return (event_type, int(raw_version))
    return None


def canonical_json(value: Any) -> bytes:  # noqa: ANN401 - any JSON value
    """Canonical JSON (sorted keys, no whitespace): equal documents give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def fingerprint(schema: Any) -> str:  # noqa: ANN401 - any JSON value
    """SHA-256 of the canonical JSON of a schema: the identity used for idempotent registration."""
    return hashlib.sha256(canonical_json(schema)).hexdigest()
