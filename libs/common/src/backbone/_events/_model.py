"""The CloudEvent model, its one validation routine and the JSON format object mapping."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, Self, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backbone._events._values import (
    INT32_MAX,
    INT32_MIN,
    attribute_to_string,
    check_timestamp,
    decode_base64,
    format_timestamp,
    is_json_content_type,
    is_uri,
    is_uri_reference,
    media_type_kind,
    parse_timestamp,
    string_problem,
)
from backbone.errors import EventError

SPECVERSION: Final = "1.0"
JSON_CONTENT_TYPE: Final = "application/json"
CORE_ATTRIBUTES: Final = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
)
# `data` is reserved by the spec; `data_base64` is the JSON format's member (and not a valid name).
RESERVED_NAMES: Final = CORE_ATTRIBUTES | {"data", "data_base64"}
_MODEL_FIELDS: Final = CORE_ATTRIBUTES | {"data", "extensions"}
# Keys of a field mapping that are not top-level extension attributes.
_NOT_EXTENSIONS: Final = _MODEL_FIELDS | {"data_base64"}
# Every trusted event has all fields set: one shared set instead of one per event (a set per
# event was a third of the objects each event adds to the GC's work). pydantic-core needs a real
# set (exclude_unset); sharing is safe because pydantic only ever adds field names to it, all of
# which are already in it, and a frozen model never reaches even that.
_ALL_FIELDS_SET: Final[set[str]] = set(_MODEL_FIELDS)
_ATTRIBUTE_NAME_RE: Final = re.compile(r"[a-z0-9]+")
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; version ff is forbidden and
# future versions may append fields after the flags.
_TRACEPARENT_RE: Final = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}"
    r"(?P<tail>-.*)?"
)
_ZERO_TRACE: Final = "0" * 32
_ZERO_PARENT: Final = "0" * 16

ExtensionValue: TypeAlias = str | int | bool | bytes


def _fail(message: str, attribute: str | None, event_id: object) -> EventError:
    return EventError(
        message, attribute=attribute, event_id=event_id if isinstance(event_id, str) else None
    )


def _check_string(name: str, value: object, event_id: object, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise _fail(f"required attribute {name!r} is missing", name, event_id)
        return None
    if not isinstance(value, str):
        raise _fail(f"{name} must be a string, not {type(value).__name__}", name, event_id)
    if not value:
        raise _fail(f"{name} must be a non-empty string", name, event_id)
    problem = string_problem(value)
    if problem is not None:
        raise _fail(f"{name} {problem}", name, event_id)
    return value


def check_extension_name(name: object, event_id: object = None) -> str:
    """Check an extension attribute name (lower-case a-z/0-9, not reserved); return it.

    Names longer than 20 characters are accepted: the spec only says SHOULD NOT.

    Raises:
        EventError: the name is invalid or reserved (attribute = the name).
    """
    if not isinstance(name, str) or _ATTRIBUTE_NAME_RE.fullmatch(name) is None:
        raise _fail(
            f"extension attribute name {name!r} must consist of lower-case letters a-z and "
            "digits 0-9 only",
            str(name),
            event_id,
        )
    if name in RESERVED_NAMES:
        raise _fail(f"{name!r} is reserved and cannot be an extension attribute", name, event_id)
    return name


def check_traceparent(value: str) -> None:
    """Check a W3C ``traceparent`` value.

    Raises:
        EventError: malformed, version ``ff``, or an all-zero trace or parent id.
    """
    match = _TRACEPARENT_RE.fullmatch(value)
    if (
        match is None
        or match.group("version") == "ff"
        or (match.group("version") == "00" and match.group("tail") is not None)
    ):
        raise EventError(
            f"traceparent {value!r} is not W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)",
            attribute="traceparent",
        )
    if match.group("trace") == _ZERO_TRACE or match.group("parent") == _ZERO_PARENT:
        raise EventError(
            "traceparent must not have an all-zero trace id or parent id", attribute="traceparent"
        )


def check_extension_value(name: str, value: object, event_id: object = None) -> ExtensionValue:
    """Check an extension value's type (String, Integer, Boolean or Binary); return it normalized.

    Raises:
        EventError: wrong type, Integer out of 32-bit range, invalid String, bad traceparent.
    """
    if isinstance(value, str):
        problem = string_problem(value)
        if problem is not None:
            raise _fail(f"extension {name} {problem}", name, event_id)
        if name == "traceparent":
            try:
                check_traceparent(value)
            except EventError as exc:
                exc.event_id = event_id if isinstance(event_id, str) else None
                raise
        return value
    if name in {"traceparent", "tracestate"}:
        raise _fail(f"{name} must be a string", name, event_id)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT32_MIN <= value <= INT32_MAX:
            raise _fail(
                f"extension {name} = {value} is outside the 32-bit Integer range", name, event_id
            )
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise _fail(
        f"extension {name} must be str, int, bool or bytes, not {type(value).__name__}",
        name,
        event_id,
    )


def _check_data(  # noqa: PLR0911 - one return per case of JSON format 3.1
    data: object, datacontenttype: str | None, event_id: object
) -> tuple[Any, str | None]:
    """Normalize `data` against `datacontenttype`; return ``(data, datacontenttype)``.

    The invariant the rest of the module relies on: with a JSON content type `data` is a JSON value
    (bytes given with a JSON type are parsed); with another content type it is str or bytes; empty
    non-JSON data is no data (binary transports cannot tell the two apart).
    """
    if data is None:
        return None, datacontenttype
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if not raw:
            return None, datacontenttype
        if datacontenttype is not None and is_json_content_type(datacontenttype):
            try:
                return orjson.loads(raw), datacontenttype
            except orjson.JSONDecodeError as exc:
                raise _fail(
                    f"data is declared as {datacontenttype} but is not valid JSON: {exc}",
                    "data",
                    event_id,
                ) from None
        return raw, datacontenttype
    if datacontenttype is None:
        # JSON format 3.1: no datacontenttype means application/json; say so explicitly so that the
        # event means the same in every binding.
        return data, JSON_CONTENT_TYPE
    if is_json_content_type(datacontenttype):
        return data, datacontenttype
    if isinstance(data, str):
        return (data or None), datacontenttype
    raise _fail(
        f"data for non-JSON datacontenttype {datacontenttype!r} must be str or bytes, "
        f"not {type(data).__name__}",
        "data",
        event_id,
    )


# Sources and content types repeat from event to event: the ones already found valid (a str,
# a String, a URI-reference / media type) skip the checks. Bounded; the values are exact strs.
_GOOD_MAX: Final = 4096
_GOOD_SOURCES: Final[set[object]] = set()
_GOOD_MEDIA_TYPES: Final[set[object]] = set()


def _plain(value: str) -> bool:
    """Whether a str is printable ASCII: then it is a valid String (see `string_problem`)."""
    return value.isascii() and value.isprintable()


def _remember(good: set[object], value: object) -> None:
    if type(value) is str:  # not a subclass: equal-but-different objects must not slip in
        if len(good) >= _GOOD_MAX:
            good.clear()
        good.add(value)


def _extensions(values: Mapping[str, Any], event_id: object) -> dict[str, ExtensionValue]:
    """The checked extensions: the ``extensions`` mapping plus top-level extension attributes."""
    extensions: dict[str, ExtensionValue] = {}
    given = values.get("extensions")
    if given is not None:
        if not isinstance(given, Mapping):
            raise _fail("extensions must be a mapping of name to value", "extensions", event_id)
        for name, value in given.items():
            if value is not None:
                check_extension_name(name, event_id)
                extensions[name] = check_extension_value(name, value, event_id)
    if not values.keys() - _NOT_EXTENSIONS:  # the common case: no top-level extensions
        return extensions
    for name, value in values.items():
        if name in _NOT_EXTENSIONS:
            continue
        if name in extensions:
            raise _fail(f"extension {name!r} is given twice", name, event_id)
        if value is not None:
            check_extension_name(name, event_id)
            extensions[name] = check_extension_value(name, value, event_id)
    return extensions


def normalize(values: Mapping[str, Any]) -> dict[str, Any]:  # noqa: C901, PLR0912 - one pass over the spec
    """Validate CloudEvent fields and return the normalized field dict.

    Accepts the model's fields plus top-level extension attributes (moved into ``extensions``),
    ``time`` as an RFC 3339 string, and ``data_base64`` as an alternative to bytes ``data``.
    ``None`` means unset for every optional attribute and extension.

    Raises:
        EventError: naming the attribute at fault.
    """
    get = values.get
    # Hot path: a value that is a non-empty printable-ASCII str is a valid String (the check
    # `string_problem` starts with); anything else takes `_check_string`, which says what is wrong.
    event_id = get("id")
    if type(event_id) is not str or not event_id or not _plain(event_id):
        _check_string("id", event_id, event_id, required=True)
    source = get("source")
    if type(source) is not str or source not in _GOOD_SOURCES:
        _check_string("source", source, event_id, required=True)
        if not is_uri_reference(source):
            raise _fail(f"source {source!r} is not an RFC 3986 URI-reference", "source", event_id)
        _remember(_GOOD_SOURCES, source)
    event_type = get("type")
    if type(event_type) is not str or not event_type or not _plain(event_type):
        _check_string("type", event_type, event_id, required=True)
    specversion = get("specversion", SPECVERSION)
    if specversion is None:
        raise _fail("required attribute 'specversion' is missing", "specversion", event_id)
    if specversion != SPECVERSION:
        raise _fail(
            f"specversion {specversion!r} is not supported (only {SPECVERSION!r})",
            "specversion",
            event_id,
        )
    datacontenttype = get("datacontenttype")
    if datacontenttype is not None and (
        type(datacontenttype) is not str or datacontenttype not in _GOOD_MEDIA_TYPES
    ):
        _check_string("datacontenttype", datacontenttype, event_id, required=False)
        if media_type_kind(datacontenttype) is None:
            raise _fail(
                f"datacontenttype {datacontenttype!r} is not an RFC 2046 media type",
                "datacontenttype",
                event_id,
            )
        _remember(_GOOD_MEDIA_TYPES, datacontenttype)
    dataschema = _check_string("dataschema", get("dataschema"), event_id, required=False)
    if dataschema is not None and not is_uri(dataschema):
        raise _fail(f"dataschema {dataschema!r} is not an absolute URI", "dataschema", event_id)
    subject = get("subject")
    if subject is not None and (type(subject) is not str or not subject or not _plain(subject)):
        _check_string("subject", subject, event_id, required=False)

    time = values.get("time")
    if isinstance(time, str):
        time = parse_timestamp(time)
    elif isinstance(time, datetime):
        time = check_timestamp(time)
    elif time is not None:
        raise _fail(
            f"time must be a datetime or RFC 3339 string, not {type(time).__name__}",
            "time",
            event_id,
        )

    extensions = _extensions(values, event_id)

    data = values.get("data")
    data_base64 = values.get("data_base64")
    if data_base64 is not None:
        if data is not None:
            raise _fail("data and data_base64 are mutually exclusive", "data_base64", event_id)
        if not isinstance(data_base64, str):
            raise _fail("data_base64 must be a base64 string", "data_base64", event_id)
        data = decode_base64(data_base64, attribute="data_base64")
    data, datacontenttype = _check_data(data, datacontenttype, event_id)

    return {
        "id": event_id,
        "source": source,
        "type": event_type,
        "specversion": SPECVERSION,
        "datacontenttype": datacontenttype,
        "dataschema": dataschema,
        "subject": subject,
        "time": time,
        "data": data,
        "extensions": extensions,
    }


def _data_equal(mine: object, theirs: object, datacontenttype: str | None) -> bool:
    if is_json_content_type(datacontenttype) and not isinstance(mine, bytes):
        return mine == theirs and type(mine) is type(theirs)
    # Opaque data: str and bytes are two in-memory forms of the same UTF-8 octets.
    mine_bytes = mine.encode() if isinstance(mine, str) else mine
    theirs_bytes = theirs.encode() if isinstance(theirs, str) else theirs
    return mine_bytes == theirs_bytes


def _check_json_extension_members(obj: Mapping[str, Any], event_id: object) -> None:
    """JSON format 2.2: extension members are strings, booleans or integer-only numbers."""
    for name, value in obj.items():
        if name in RESERVED_NAMES or value is None:
            continue
        if isinstance(value, float):
            raise _fail(
                f"extension {name} must be an integer (no fraction or exponent), got {value!r}",
                name,
                event_id,
            )
        if not isinstance(value, str | int | bool):  # bool is an int; listed for clarity
            raise _fail(
                f"extension {name} must be a JSON string, number or boolean",
                name,
                event_id,
            )


class CloudEvent(BaseModel):
    """A CloudEvents v1.0 event, valid by construction and immutable.

    Build one with :meth:`create` (defaults for id, time and content type) or with the
    constructor; extension attributes may be passed as keywords or in ``extensions``. Every
    construction path checks the spec and raises :class:`~backbone.errors.EventError` naming the
    attribute at fault.

    ``data`` is a JSON value when ``datacontenttype`` declares JSON (``*/json``, ``*/*+json``;
    absent means ``application/json``), otherwise ``str`` or ``bytes``; ``bytes`` is written as
    ``data_base64`` in the JSON format.

    Equality is the spec's: two events are equal when every attribute has the same canonical
    string encoding and the data is the same. So an Integer extension ``5`` that crossed a binary
    transport (where every attribute is a string) as ``"5"`` still compares equal, and ``str``
    data with a non-JSON content type equals its UTF-8 bytes. The hash is ``(source, id)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str
    source: str
    type: str
    specversion: Literal["1.0"] = "1.0"
    datacontenttype: str | None = None
    dataschema: str | None = None
    subject: str | None = None
    time: datetime | None = None
    data: Any = None
    extensions: dict[str, ExtensionValue] = Field(default_factory=dict)

    def __init__(self, **values: Any) -> None:  # noqa: ANN401 - attributes of any type
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _event_error(exc, values.get("id")) from None

    @model_validator(mode="before")
    @classmethod
    def _validate_spec(cls, values: object) -> object:
        if isinstance(values, CloudEvent):
            return values
        if not isinstance(values, Mapping):
            raise EventError("a CloudEvent must be built from a mapping of attributes")
        return normalize(values)

    @classmethod
    def _trusted(cls, fields: dict[str, Any]) -> Self:
        """Build an instance from fields `normalize` already produced, skipping pydantic.

        This is what ``model_construct`` does for a model without aliases, defaults to fill or
        private attributes, minus its generic per-field loop (it is on the publish hot path).
        """
        event = cls.__new__(cls)
        _set = object.__setattr__
        _set(event, "__dict__", fields)
        _set(event, "__pydantic_fields_set__", _ALL_FIELDS_SET)
        _set(event, "__pydantic_extra__", None)
        _set(event, "__pydantic_private__", None)
        return event

    @classmethod
    def create(
        cls,
        *,
        type: str,  # noqa: A002 - the attribute's name in the spec
        source: str,
        data: Any = None,  # noqa: ANN401 - any JSON value, or bytes
        id: str | None = None,  # noqa: A002 - the attribute's name in the spec
        subject: str | None = None,
        time: datetime | None = None,
        datacontenttype: str | None = None,
        dataschema: str | None = None,
        extensions: Mapping[str, ExtensionValue] | None = None,
    ) -> Self:
        """Create an event with sensible defaults.

        Args:
            type: Event type, e.g. ``mcp.server.error`` (also the NATS subject).
            source: URI-reference of the producing context, e.g. ``/claude/mcp/filesystem``.
            data: A JSON value, or bytes for opaque data (then set ``datacontenttype``).
            id: Event id; a random UUID4 by default.
            subject: Subject of the event within the source.
            time: Occurrence time (timezone-aware); now in UTC by default.
            datacontenttype: Media type of `data`; ``application/json`` by default when `data`
                is given and is not bytes.
            dataschema: Absolute URI of the schema `data` adheres to.
            extensions: Extension attributes (including ``traceparent``/``tracestate``).

        Raises:
            EventError: naming the attribute at fault.
        """
        fields = normalize(
            {
                "id": str(uuid.uuid4()) if id is None else id,
                "source": source,
                "type": type,
                "datacontenttype": datacontenttype,
                "dataschema": dataschema,
                "subject": subject,
                "time": datetime.now(UTC) if time is None else time,
                "data": data,
                "extensions": extensions,
            }
        )
        return cls._trusted(fields)

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` (distributed-tracing extension), if set."""
        value = self.extensions.get("traceparent")
        return value if isinstance(value, str) else None

    @property
    def tracestate(self) -> str | None:
        """The W3C ``tracestate`` (distributed-tracing extension), if set."""
        value = self.extensions.get("tracestate")
        return value if isinstance(value, str) else None

    @property
    def data_base64(self) -> str | None:
        """Binary ``data`` as the JSON format writes it (base64), or None when data is not bytes."""
        return base64.b64encode(self.data).decode("ascii") if isinstance(self.data, bytes) else None

    def with_extensions(self, **extensions: ExtensionValue | None) -> Self:
        """Return a copy with extension attributes added or replaced (``None`` removes one).

        Raises:
            EventError: an invalid extension name or value.
        """
        merged = dict(self.extensions)
        for name, value in extensions.items():
            if value is None:
                merged.pop(name, None)
                continue
            check_extension_name(name, self.id)
            merged[name] = check_extension_value(name, value, self.id)
        fields = dict(self.__dict__)
        fields["extensions"] = merged
        # Everything else was validated when `self` was built, so skip pydantic for the copy.
        return self._trusted(fields)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Copy the event; an `update` is validated like a construction (events stay valid).

        Raises:
            EventError: the updated event breaks the spec.
        """
        if not update:
            return super().model_copy(deep=deep)
        fields = normalize({**self.__dict__, **update})
        copy = self._trusted(fields)
        return copy.model_copy(deep=True) if deep else copy

    def attributes(self) -> dict[str, ExtensionValue | datetime]:
        """All context attributes that are set (core and extensions) in their native types."""
        out: dict[str, ExtensionValue | datetime] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        for name in ("datacontenttype", "dataschema", "subject", "time"):
            value = self.__dict__[name]
            if value is not None:
                out[name] = value
        out.update(self.extensions)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON format object (``data``, or ``data_base64`` for bytes).

        Raises:
            EventError: `data` cannot be represented (only from :func:`to_json`'s serializer).
        """
        out: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        if self.datacontenttype is not None:
            out["datacontenttype"] = self.datacontenttype
        if self.dataschema is not None:
            out["dataschema"] = self.dataschema
        if self.subject is not None:
            out["subject"] = self.subject
        if self.time is not None:
            out["time"] = format_timestamp(self.time)
        for name, value in self.extensions.items():
            out[name] = (
                base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
            )
        data = self.data
        if isinstance(data, bytes):
            out["data_base64"] = base64.b64encode(data).decode("ascii")
        elif data is not None:
            out["data"] = data
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Self:
        """Build an event from a JSON format object (the inverse of :meth:`to_dict`).

        ``null`` members are unset; extension members must be JSON strings, booleans or integers
        (within the 32-bit range); ``data`` with a non-JSON content type must be a string.

        Raises:
            EventError: naming the attribute (JSON member) at fault.
        """
        if not isinstance(obj, Mapping):
            raise EventError("a JSON format CloudEvent must be a JSON object")
        event_id = obj.get("id")
        if obj.get("specversion") is None:  # the model defaults it; the JSON format requires it
            raise _fail("required attribute 'specversion' is missing", "specversion", event_id)
        if obj.get("data_base64") is not None and "data" in obj:
            raise _fail("data and data_base64 are mutually exclusive", "data_base64", event_id)
        if "extensions" in obj:
            # Not a JSON format member: a nested object would be an (invalid) extension value.
            raise _fail("extension attribute values cannot be JSON objects", "extensions", event_id)
        _check_json_extension_members(obj, event_id)
        time = obj.get("time")
        if time is not None and not isinstance(time, str):
            raise _fail("time must be an RFC 3339 string", "time", event_id)
        datacontenttype = obj.get("datacontenttype")
        data = obj.get("data")
        if (
            data is not None
            and isinstance(datacontenttype, str)
            and media_type_kind(datacontenttype) is False
            and not isinstance(data, str)
        ):
            raise _fail(
                f"data for non-JSON datacontenttype {datacontenttype!r} must be a JSON string",
                "data",
                event_id,
            )
        return cls._trusted(normalize(obj))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CloudEvent):
            return NotImplemented
        if (
            self.id != other.id
            or self.source != other.source
            or self.type != other.type
            or self.datacontenttype != other.datacontenttype
            or self.dataschema != other.dataschema
            or self.subject != other.subject
            or self.time != other.time
            or self.extensions.keys() != other.extensions.keys()
        ):
            return False
        for name, value in self.extensions.items():
            if attribute_to_string(value) != attribute_to_string(other.extensions[name]):
                return False
        return _data_equal(self.data, other.data, self.datacontenttype)

    def __hash__(self) -> int:
        return hash((self.source, self.id))


def _event_error(exc: ValidationError, event_id: object) -> EventError:
    """Turn pydantic's wrapper back into the EventError raised inside, or name the field."""
    for error in exc.errors():
        original = error.get("ctx", {}).get("error")
        if isinstance(original, EventError):
            return original
    first = exc.errors()[0]
    attribute = ".".join(str(part) for part in first["loc"]) or None
    return _fail(f"{attribute}: {first['msg']}", attribute, event_id)
