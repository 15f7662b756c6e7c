"""Value rules of the CloudEvents type system: strings, URIs, media types, timestamps, headers.

Everything here is pure and allocation-light because it runs on the publish hot path. Checks whose
answer depends only on a value that repeats a lot (sources, content types, schema URIs) are cached.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Final

import orjson

from backbone.errors import BindingError, EventError

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

# --- String -----------------------------------------------------------------------------------
# Spec "Type System / String": no C0/C1 controls, no noncharacters, no (unpaired) surrogates. A
# Python str holds a properly paired surrogate as one code point, so any surrogate left is unpaired.
_NONCHARACTERS = "".join(
    f"\\U{(plane << 16) | 0xFFFE:08x}\\U{(plane << 16) | 0xFFFF:08x}" for plane in range(17)
)
_BAD_STRING_CHAR: Final = re.compile(
    f"[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff\\ufdd0-\\ufdef{_NONCHARACTERS}]"
)


def string_problem(value: str) -> str | None:
    """Return why `value` is not a CloudEvents String, or None when it is one."""
    if value.isascii() and value.isprintable():  # the common case, far cheaper than the regex
        return None
    match = _BAD_STRING_CHAR.search(value)
    if match is None:
        return None
    return f"contains the disallowed character U+{ord(match.group()):04X}"


# --- URI and URI-reference (RFC 3986) -----------------------------------------------------------
_PCT = r"%[0-9A-Fa-f]{2}"
_UNRESERVED_SUB = r"A-Za-z0-9\-._~!$&'()*+,;="
_PCHAR = rf"(?:[{_UNRESERVED_SUB}:@]|{_PCT})"
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_SEGMENT_NZ_NC = rf"(?:[{_UNRESERVED_SUB}@]|{_PCT})+"  # first segment of a relative path: no ':'
_QUERY_OR_FRAGMENT = rf"(?:{_PCHAR}|[/?])*"
_USERINFO = rf"(?:[{_UNRESERVED_SUB}:]|{_PCT})*"
_IP_LITERAL = rf"\[[0-9A-Fa-fvV:.{_UNRESERVED_SUB}]+\]"
_REG_NAME = rf"(?:[{_UNRESERVED_SUB}]|{_PCT})*"
_AUTHORITY = rf"(?:{_USERINFO}@)?(?:{_IP_LITERAL}|{_REG_NAME})(?::[0-9]*)?"
_PATH_ABEMPTY = rf"(?:/{_SEGMENT})*"
_PATH_ROOTLESS = rf"{_SEGMENT_NZ}(?:/{_SEGMENT})*"
_PATH_ABSOLUTE = rf"/(?:{_PATH_ROOTLESS})?"
_HIER_PART = rf"(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_PATH_ROOTLESS}|)"
_RELATIVE_PART = (
    rf"(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_SEGMENT_NZ_NC}(?:/{_SEGMENT})*|)"
)
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_TAIL = rf"(?:\?{_QUERY_OR_FRAGMENT})?(?:#{_QUERY_OR_FRAGMENT})?"
_URI_RE: Final = re.compile(rf"{_SCHEME}:{_HIER_PART}{_TAIL}")
_URI_REFERENCE_RE: Final = re.compile(rf"(?:{_SCHEME}:{_HIER_PART}|{_RELATIVE_PART}){_TAIL}")


@lru_cache(maxsize=2048)
def is_uri_reference(value: str) -> bool:
    """Whether `value` is a non-empty RFC 3986 URI-reference (section 4.1)."""
    return bool(value) and _URI_REFERENCE_RE.fullmatch(value) is not None


@lru_cache(maxsize=512)
def is_uri(value: str) -> bool:
    """Whether `value` is an RFC 3986 URI with a scheme (section 3; a fragment is allowed)."""
    return _URI_RE.fullmatch(value) is not None


# --- Media types (RFC 2045/2046) ----------------------------------------------------------------
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # noqa: S105 - RFC 7230 token pattern, not a secret
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_MEDIA_TYPE_RE: Final = re.compile(
    rf"(?P<type>{_TOKEN})/(?P<subtype>{_TOKEN})(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*"
    r"[ \t]*(?:;[ \t]*)?"  # one optional trailing ';': two adjacent [ \t]* would backtrack O(n^2)
)


@lru_cache(maxsize=512)
def media_type_kind(value: str) -> bool | None:
    """Classify a content type.

    Returns:
        None when `value` is not an RFC 2046 media type, True when it declares JSON-formatted
        content (subtype ``json`` or ending in ``+json``, compared case-insensitively per the
        JSON format section 3.1.1), False otherwise.
    """
    match = _MEDIA_TYPE_RE.fullmatch(value)
    if match is None:
        return None
    subtype = match.group("subtype").lower()
    return subtype == "json" or subtype.endswith("+json")


def is_json_content_type(value: str | None) -> bool:
    """Whether data with this `datacontenttype` is a JSON value (absent means application/json)."""
    return value is None or media_type_kind(value) is True


# --- Timestamp (RFC 3339) ---------------------------------------------------------------------
_RFC3339_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_FRACTION_DIGITS: Final = 6


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware datetime.

    Fractions finer than a microsecond are truncated (Python's resolution); an offset of
    ``-00:00`` ("local offset unknown") is read as UTC.

    Raises:
        EventError: `value` is not an RFC 3339 date-time (attribute ``time``).
    """
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        raise EventError(
            f"time {value!r} is not an RFC 3339 timestamp (e.g. 2018-04-05T17:31:00Z)",
            attribute="time",
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    tz: timezone = UTC
    if not zulu:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        if int(off_h) > 23 or int(off_m) > 59:  # noqa: PLR2004 - RFC 3339 time-numoffset ranges
            raise EventError(f"time {value!r} has an invalid UTC offset", attribute="time")
        if offset:
            tz = timezone(-offset if sign == "-" else offset)
    micro = int((fraction or "0")[:_FRACTION_DIGITS].ljust(_FRACTION_DIGITS, "0"))
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
    except ValueError as exc:  # e.g. Feb 30, hour 24 or a leap second (Python has no :60)
        raise EventError(
            f"time {value!r} is not a valid date-time: {exc}", attribute="time"
        ) from None


def check_timestamp(value: datetime) -> datetime:
    """Check that a datetime can be a CloudEvents Timestamp; return it in canonical form.

    Offsets that RFC 3339 cannot express (sub-minute) are converted to UTC.

    Raises:
        EventError: naive datetime (attribute ``time``).
    """
    offset = value.utcoffset()
    if offset is None:
        raise EventError(
            "time must be timezone-aware (RFC 3339 needs an offset); use datetime.now(UTC)",
            attribute="time",
        )
    if offset.seconds % 60 or offset.microseconds:
        return value.astimezone(UTC)
    return value


def format_timestamp(value: datetime) -> str:
    """Canonical RFC 3339 form: ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+HH:MM)``, ``Z`` for UTC."""
    if value.tzinfo is UTC and type(value) is datetime:
        # The publish hot path's case (``create`` stamps ``datetime.now(UTC)``): orjson writes
        # exactly isoformat's digits with ``Z``, four times faster. Other zones take isoformat,
        # which also spells historical sub-minute offsets (LMT) that orjson would round.
        return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:-1].decode("ascii")
    text = value.isoformat()
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    return text


# --- Canonical string encoding ------------------------------------------------------------------


def attribute_to_string(value: object) -> str:
    """Return the canonical string encoding of a CloudEvents attribute value.

    Boolean -> ``true``/``false``; Integer -> decimal (32-bit signed range); String, URI and
    URI-reference -> unchanged; Binary (bytes) -> base64 (RFC 4648, padded); Timestamp
    (aware datetime) -> RFC 3339 with ``Z`` for UTC.

    Raises:
        EventError: the value has no CloudEvents type, or an Integer is out of range.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT32_MIN <= value <= INT32_MAX:
            raise EventError(f"integer {value} is outside the CloudEvents 32-bit Integer range")
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return format_timestamp(check_timestamp(value))
    raise EventError(f"{type(value).__name__} is not a CloudEvents attribute type")


def decode_base64(value: str, *, attribute: str) -> bytes:
    """Decode standard, padded base64 (RFC 4648 section 4) strictly.

    Raises:
        EventError: `value` is not valid base64 (naming `attribute`).
    """
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EventError(f"{attribute} is not valid base64", attribute=attribute) from None


# --- Header percent-encoding (HTTP binding 3.1.3.2 = NATS binding 3.1.3.2) ------------------------
# Everything except printable ASCII U+0021-U+007E, and within it '"' and '%', is encoded.
_NEEDS_ENCODING: Final = re.compile(r"[^!#$&-~]+")
_PCT_BYTE: Final = tuple(f"%{byte:02X}" for byte in range(256))
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def _encode_run(match: re.Match[str]) -> str:
    return "".join(map(_PCT_BYTE.__getitem__, match.group().encode("utf-8")))


def encode_header_value(value: str) -> str:
    """Percent-encode an attribute's canonical string for a protocol header value.

    Space, double-quote, percent and every character outside printable ASCII (U+0021-U+007E) are
    UTF-8 encoded and written as upper-case ``%XY`` per byte, exactly as the HTTP and NATS
    bindings specify (section 3.1.3.2); everything else is left as is.

    Raises:
        EventError: `value` holds an unpaired surrogate (not encodable as UTF-8).
    """
    if _NEEDS_ENCODING.search(value) is None:
        return value
    try:
        return _NEEDS_ENCODING.sub(_encode_run, value)
    except UnicodeEncodeError:
        raise EventError("header value holds an unpaired surrogate") from None


# Attribute values that repeat from event to event (source, type, datacontenttype, dataschema)
# are encoded once; the bound keeps a producer with unbounded distinct values from growing it.
_REPEATED_MAX: Final = 4096
_repeated: dict[str, str] = {}


def encode_repeated_header_value(value: str) -> str:
    """:func:`encode_header_value` memoised, for attribute values that repeat between events.

    Raises:
        EventError: `value` holds an unpaired surrogate (not encodable as UTF-8).
    """
    encoded = _repeated.get(value)
    if encoded is None:
        encoded = encode_header_value(value)
        if len(_repeated) >= _REPEATED_MAX:
            _repeated.clear()  # rare: a crude bound, cheaper per call than LRU bookkeeping
        _repeated[value] = encoded
    return encoded


def _unquote(value: str) -> str:
    """Undo RFC 7230 section 3.2.6 quoted-strings (with backslash escapes) inside a value."""
    out: list[str] = []
    index, length = 0, len(value)
    while index < length:
        char = value[index]
        if char != '"':
            out.append(char)
            index += 1
            continue
        index += 1
        while True:
            if index >= length:
                raise BindingError(f"unterminated quoted-string in header value {value!r}")
            char = value[index]
            if char == "\\":
                if index + 1 >= length:
                    raise BindingError(f"dangling backslash in header value {value!r}")
                out.append(value[index + 1])
                index += 2
            elif char == '"':
                index += 1
                break
            else:
                out.append(char)
                index += 1
    return "".join(out)


def decode_header_value(value: str) -> str:
    """Decode a protocol header value into an attribute's canonical string.

    Surrounding optional whitespace is dropped, RFC 7230 quoted-strings are unescaped, then one
    round of percent-decoding is done; lower-case hex and needlessly encoded characters are
    accepted, byte sequences that are not valid UTF-8 (e.g. overlong ``%C0%A0``) are rejected.

    Raises:
        BindingError: malformed quoting or percent-escape, or invalid UTF-8.
    """
    text = value.strip(" \t")
    if '"' in text:
        text = _unquote(text)
    if "%" not in text:
        return text
    head, *rest = text.split("%")
    out = bytearray(head.encode("utf-8"))
    for part in rest:
        if len(part) < 2 or part[0] not in _HEX_DIGITS or part[1] not in _HEX_DIGITS:  # noqa: PLR2004
            raise BindingError(f"malformed percent-escape in header value {value!r}")
        out.append(int(part[:2], 16))
        out += part[2:].encode("utf-8")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise BindingError(f"header value {value!r} percent-decodes to invalid UTF-8") from None
