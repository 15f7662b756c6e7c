"""Binary content mode parts and the NATS protocol binding (binary and structured modes)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from backbone._events._format import STRUCTURED_CONTENT_TYPE, from_json, to_json
from backbone._events._model import (
    CORE_ATTRIBUTES,
    SPECVERSION,
    CloudEvent,
    normalize,
)
from backbone._events._values import _repeated as _repeated_header_values
from backbone._events._values import (
    attribute_to_string,
    decode_header_value,
    encode_header_value,
    encode_repeated_header_value,
    format_timestamp,
    is_json_content_type,
)
from backbone.errors import BindingError, EventError

if TYPE_CHECKING:
    from collections.abc import Mapping

CE_HEADER_PREFIX: Final = "ce-"
CONTENT_TYPE_HEADER: Final = "Content-Type"
_CLOUDEVENTS_MEDIA_PREFIX: Final = "application/cloudevents"
_STRUCTURED_HEADERS: Final = {CONTENT_TYPE_HEADER: STRUCTURED_CONTENT_TYPE}
_blake2b: Final = hashlib.blake2b
# datacontenttype -> whether it is also copied to Content-Type (not when it reads as structured).
_COPY_CONTENT_TYPE_MAX: Final = 256
_copy_content_type: dict[str, bool] = {}


def dedup_id(event: CloudEvent) -> str:
    """Return the ``Nats-Msg-Id`` for an event: blake2b-128 hex of ``source`` NUL ``id``.

    The spec makes ``source`` + ``id`` the identity of an event. Neither may contain NUL (a control
    character), so the join is unambiguous; the digest keeps the header short, ASCII and stable.
    """
    # One buffer, one call: the same digest as feeding source, NUL and id one after the other.
    return _blake2b(f"{event.source}\0{event.id}".encode(), digest_size=16).hexdigest()


def data_to_bytes(event: CloudEvent) -> bytes:
    """The event's data as the byte sequence a binary content mode message carries.

    JSON content -> UTF-8 JSON text; str -> UTF-8; bytes -> as is; no data -> empty.

    Raises:
        EventError: JSON content that cannot be serialized (attribute ``data``).
    """
    data = event.data
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and not is_json_content_type(event.datacontenttype):
        return data.encode("utf-8")
    try:
        return orjson.dumps(data)
    except TypeError as exc:
        raise EventError(
            f"data is not representable as JSON: {exc}", attribute="data", event_id=event.id
        ) from None


def to_binary_parts(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Split an event for a binary content mode message.

    Returns:
        ``(attributes, payload)``: every set attribute (core and extensions, including
        ``datacontenttype``) as its canonical string, not yet header-encoded, and the data bytes.
    """
    attributes = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type,
    }
    if event.datacontenttype is not None:
        attributes["datacontenttype"] = event.datacontenttype
    if event.dataschema is not None:
        attributes["dataschema"] = event.dataschema
    if event.subject is not None:
        attributes["subject"] = event.subject
    if event.time is not None:
        attributes["time"] = format_timestamp(event.time)
    for name, value in event.extensions.items():
        attributes[name] = value if isinstance(value, str) else attribute_to_string(value)
    return attributes, data_to_bytes(event)


def from_binary_parts(attributes: Mapping[str, str], payload: bytes) -> CloudEvent:
    """Build an event from a binary content mode message's attributes and payload.

    Args:
        attributes: Attribute name (lower case, without prefix) -> canonical string, already
            header-decoded. Extension values stay strings: a binary message carries no types.
        payload: The message body; parsed as JSON when ``datacontenttype`` declares JSON, kept
            as bytes otherwise (also when no content type is given); empty means no data.

    Raises:
        BindingError: the payload is not the JSON its content type declares, or the
            required ``specversion`` is missing.
        EventError: an attribute breaks the spec (naming it).
    """
    event_id = attributes.get("id")
    if "specversion" not in attributes:
        raise BindingError(
            "binary mode message has no specversion attribute (ce-specversion header)",
            attribute="specversion",
            event_id=event_id,
        )
    datacontenttype = attributes.get("datacontenttype")
    data: Any = payload or None
    if data is not None and datacontenttype is not None and is_json_content_type(datacontenttype):
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise BindingError(
                f"payload is declared as {datacontenttype} but is not valid JSON: {exc}",
                attribute="data",
                event_id=event_id,
            ) from None
    values: dict[str, Any] = dict(attributes)
    extensions: dict[str, str] = {}
    if attributes.keys() - CORE_ATTRIBUTES:  # extensions (or worse) present: sort them out
        for name in attributes:
            if name in CORE_ATTRIBUTES:
                continue
            if name in {"data", "data_base64", "extensions"}:
                raise EventError(
                    f"{name!r} is not a context attribute", attribute=name, event_id=event_id
                )
            extensions[name] = values.pop(name)
    values["extensions"] = extensions
    values["data"] = data
    return CloudEvent._trusted(normalize(values))  # noqa: SLF001 - same package


def encode_nats(
    event: CloudEvent, *, mode: Literal["binary", "structured"] = "binary"
) -> tuple[dict[str, str], bytes]:
    """Encode an event as a NATS message per the NATS protocol binding.

    Binary mode: every attribute, extensions included, becomes a ``ce-<name>`` header holding its
    percent-encoded canonical string (``datacontenttype`` -> ``ce-datacontenttype``, as the
    binding says); the content type is also copied to ``Content-Type`` for generic NATS tools
    (omitted when it would read as structured mode); the payload is the data bytes.
    Structured mode: ``Content-Type: application/cloudevents+json`` and the JSON format body.

    Returns:
        ``(headers, payload)``, ready for ``js.publish(subject, payload, headers=headers)``.

    Raises:
        EventError: `data` is not representable as JSON.
        ValueError: unknown `mode`.
    """
    if mode == "structured":
        return dict(_STRUCTURED_HEADERS), to_json(event)
    if mode != "binary":
        raise ValueError(f"mode must be 'binary' or 'structured', not {mode!r}")
    return _binary_headers(event), data_to_bytes(event)


def _binary_headers(event: CloudEvent) -> dict[str, str]:
    """The ``ce-`` headers of :func:`to_binary_parts`'s attributes, header-encoded, in one pass.

    This is the publish hot path, so it reads the validated fields directly and encodes the values
    that repeat between events (source, type, content type, schema) once; ``time`` is RFC 3339,
    pure printable ASCII, so it needs no encoding.
    """
    fields = event.__dict__
    repeated = _repeated_header_values.get
    source: str = fields["source"]
    event_type: str = fields["type"]
    headers = {
        "ce-specversion": SPECVERSION,
        "ce-id": encode_header_value(fields["id"]),
        "ce-source": repeated(source) or encode_repeated_header_value(source),
        "ce-type": repeated(event_type) or encode_repeated_header_value(event_type),
    }
    content_type: str | None = fields["datacontenttype"]
    if content_type is not None:
        headers["ce-datacontenttype"] = repeated(content_type) or encode_repeated_header_value(
            content_type
        )
    if fields["dataschema"] is not None:
        headers["ce-dataschema"] = encode_repeated_header_value(fields["dataschema"])
    if fields["subject"] is not None:
        headers["ce-subject"] = encode_header_value(fields["subject"])
    if fields["time"] is not None:
        headers["ce-time"] = format_timestamp(fields["time"])
    extensions = fields["extensions"]
    if extensions:
        for name, value in extensions.items():
            headers[CE_HEADER_PREFIX + name] = encode_header_value(
                value if isinstance(value, str) else attribute_to_string(value)
            )
    if content_type is not None and _copies_content_type(content_type):
        headers[CONTENT_TYPE_HEADER] = content_type
    return headers


def _copies_content_type(content_type: str) -> bool:
    """Whether binary mode copies ``datacontenttype`` to ``Content-Type`` (not structured-like)."""
    copy = _copy_content_type.get(content_type)
    if copy is None:
        copy = not content_type.lower().startswith(_CLOUDEVENTS_MEDIA_PREFIX)
        if len(_copy_content_type) >= _COPY_CONTENT_TYPE_MAX:
            _copy_content_type.clear()
        _copy_content_type[content_type] = copy
    return copy


def decode_nats(headers: Mapping[str, str] | None, payload: bytes) -> CloudEvent:
    """Decode a NATS message into an event, detecting the content mode.

    A ``Content-Type`` starting with ``application/cloudevents`` (case-insensitive) means
    structured mode (only the JSON format is supported; the binding has no batch mode);
    otherwise a ``ce-specversion`` header means binary mode. Header names are matched
    case-insensitively; in binary mode ``ce-datacontenttype`` gives the content type, falling
    back to ``Content-Type`` (as HTTP-style producers write it).

    Raises:
        BindingError: neither mode applies, duplicate or malformed headers, bad percent-encoding
            or UTF-8, a payload that is not the declared JSON, an unsupported event format.
        EventError: the event breaks the spec (naming the attribute).
    """
    lowered: dict[str, str] = {}
    for name, value in (headers or {}).items():
        key = name.lower()
        if key in lowered:
            raise BindingError(f"header {name!r} appears more than once", attribute=key[3:] or None)
        lowered[key] = value
    content_type = lowered.get("content-type")
    if content_type is not None and content_type.lstrip().lower().startswith(
        _CLOUDEVENTS_MEDIA_PREFIX
    ):
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != STRUCTURED_CONTENT_TYPE:
            raise BindingError(
                f"unsupported structured event format {media_type!r} "
                f"(only {STRUCTURED_CONTENT_TYPE}; the NATS binding has no batch mode)"
            )
        return from_json(payload)
    if "ce-specversion" not in lowered:
        raise BindingError(
            "not a CloudEvent: no Content-Type: application/cloudevents+json (structured mode) "
            "and no ce-specversion header (binary mode)",
            attribute="specversion",
        )
    attributes: dict[str, str] = {}
    for key, value in lowered.items():
        if key.startswith(CE_HEADER_PREFIX):
            name = key[3:]
            try:
                attributes[name] = decode_header_value(value)
            except BindingError as exc:
                exc.attribute = name
                raise
    if "datacontenttype" not in attributes and content_type is not None:
        attributes["datacontenttype"] = content_type.strip()
    return from_binary_parts(attributes, payload)
