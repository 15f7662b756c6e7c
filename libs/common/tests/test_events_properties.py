"""Property tests: every valid event round-trips through the JSON format and both NATS modes,
validates against the spec's JSON Schema, and survives the official SDK both ways."""

from __future__ import annotations

import json
import string
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import orjson
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone._events._model import RESERVED_NAMES
from backbone.events import (
    CloudEvent,
    decode_http_header_value,
    decode_nats,
    encode_http_header_value,
    encode_nats,
    from_batch_json,
    from_json,
    to_batch_json,
    to_binary_parts,
    to_json,
)

SPECS = Path(__file__).resolve().parents[3].parent / "shared" / "specs" / "cloudevents"
SCHEMA = json.loads((SPECS / "cloudevents.json").read_text())
DRAFT7 = jsonschema.Draft7Validator(SCHEMA)
WITH_FORMATS = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)

# Deterministic (derandomized) and bounded: the whole file runs in a few seconds.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)

# CloudEvents String: any Unicode except controls (Cc), surrogates (Cs) and noncharacters (Cn).
attribute_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=12
)
_URI_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
_pct = st.integers(0, 255).map(lambda b: f"%{b:02X}")
_segment = st.lists(st.sampled_from(_URI_CHARS) | _pct, max_size=6).map("".join)
_path = st.lists(_segment, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))
sources = st.one_of(
    st.sampled_from(
        [
            "https://github.com/cloudevents",
            "mailto:cncf-wg-serverless@lists.cncf.io",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "1-555-123-4567",
        ]
    ),
    _path,
    st.builds(lambda p, q: f"https://example.com{p}?q={q}#f", _path, _segment),
)
dataschemas = st.none() | _path.map(lambda p: f"https://schemas.example.com{p}")
times = st.none() | st.datetimes(
    timezones=st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
)
_hex = "0123456789abcdef"
traceparents = st.builds(
    lambda trace, parent, flags: f"00-{trace}-{parent}-{flags}",
    st.text(_hex, min_size=32, max_size=32).filter(lambda s: s != "0" * 32),
    st.text(_hex, min_size=16, max_size=16).filter(lambda s: s != "0" * 16),
    st.text(_hex, min_size=2, max_size=2),
)
extension_names = st.from_regex(r"[a-z0-9]{1,24}", fullmatch=True).filter(
    lambda name: name not in RESERVED_NAMES and name not in {"traceparent", "tracestate"}
)
extension_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cn")), max_size=12),
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
    st.binary(max_size=12),
)


@st.composite
def extension_maps(draw: st.DrawFn) -> dict[str, Any]:
    extensions: dict[str, Any] = draw(
        st.dictionaries(extension_names, extension_values, max_size=4)
    )
    if draw(st.booleans()):
        extensions["traceparent"] = draw(traceparents)
        if draw(st.booleans()):
            extensions["tracestate"] = draw(attribute_text)
    return extensions


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
JSON_TYPES = ["application/json", "text/json", "application/vnd.example+json; charset=utf-8"]
OTHER_TYPES = ["text/plain", "application/xml", "image/png", "application/octet-stream"]
payloads = st.one_of(
    st.tuples(json_values, st.none() | st.sampled_from(JSON_TYPES)),
    st.tuples(st.binary(min_size=1, max_size=24), st.none() | st.sampled_from(OTHER_TYPES)),
    st.tuples(st.text(min_size=1, max_size=24), st.sampled_from(OTHER_TYPES[:2])),
    st.tuples(st.none(), st.none() | st.sampled_from(JSON_TYPES + OTHER_TYPES)),
)


@st.composite
def events(draw: st.DrawFn, *, timed: bool = False) -> CloudEvent:
    data, datacontenttype = draw(payloads)
    return CloudEvent(
        id=draw(attribute_text),
        source=draw(sources),
        type=draw(attribute_text),
        subject=draw(st.none() | attribute_text),
        dataschema=draw(dataschemas),
        time=draw(times.filter(lambda t: t is not None) if timed else times),
        datacontenttype=datacontenttype,
        data=data,
        extensions=draw(extension_maps()),
    )


def assert_same(got: CloudEvent, expected: CloudEvent) -> None:
    assert got == expected
    # Stronger than equality: the exact canonical strings and payload bytes on the wire.
    assert to_binary_parts(got) == to_binary_parts(expected)


@PROPERTY
@given(events())
def test_every_event_round_trips_through_the_json_format(event):
    back = from_json(to_json(event))
    assert_same(back, event)
    assert back.to_dict() == event.to_dict()


@PROPERTY
@given(events())
def test_every_event_round_trips_through_nats_binary_mode(event):
    headers, payload = encode_nats(event, mode="binary")
    for name, value in headers.items():
        assert name.isascii()
        # ce-* values are percent-encoded; the plain Content-Type copy may hold spaces.
        lowest = "!" if name.startswith("ce-") else " "
        assert all(lowest <= char <= "~" for char in value), (name, value)
    assert_same(decode_nats(headers, payload), event)
    # Header names are case-insensitive on the way in.
    assert_same(decode_nats({k.upper(): v for k, v in headers.items()}, payload), event)


@PROPERTY
@given(events())
def test_every_event_round_trips_through_nats_structured_mode(event):
    headers, payload = encode_nats(event, mode="structured")
    back = decode_nats(headers, payload)
    assert_same(back, event)
    assert back.to_dict() == event.to_dict()


@PROPERTY
@given(st.lists(events(), max_size=4))
def test_batches_round_trip(batch):
    assert from_batch_json(to_batch_json(batch)) == batch


@PROPERTY
@given(events())
def test_every_emitted_event_validates_against_the_spec_schema(event):
    obj = orjson.loads(to_json(event))
    DRAFT7.validate(obj)
    WITH_FORMATS.validate(obj)


@PROPERTY
@given(st.text(max_size=30))
def test_percent_encoding_round_trips_any_text(text):
    encoded = encode_http_header_value(text)
    assert all("!" <= char <= "~" for char in encoded)
    assert decode_http_header_value(encoded) == text


# --- interop with the official CloudEvents Python SDK (cloudevents.core) -------------------------


# The SDK stamps the current time on events without one, so these use events that have a time.
@PROPERTY
@given(events(timed=True))
def test_sdk_reads_our_json_and_writes_back_the_same_event(event):
    sdk_event = JSONFormat().read(None, to_json(event))
    assert sdk_event.get_id() == event.id
    assert sdk_event.get_source() == event.source
    assert sdk_event.get_type() == event.type
    assert sdk_event.get_time() == event.time
    assert sdk_event.get_subject() == event.subject
    assert_same(from_json(JSONFormat().write(sdk_event)), event)


sdk_payloads = st.one_of(  # the SDK's binary data writer only serializes dicts as JSON
    st.tuples(
        st.dictionaries(st.text(max_size=6), json_values, max_size=4), st.just("application/json")
    ),
    st.tuples(st.binary(min_size=1, max_size=24), st.just("image/png")),
    st.tuples(st.text(min_size=1, max_size=24), st.just("text/plain")),
)


@PROPERTY
@given(events(timed=True), sdk_payloads)
def test_sdk_decodes_our_binary_mode_and_its_binary_mode_decodes_to_our_event(event, payload):
    data, datacontenttype = payload
    event = CloudEvent(**{**event.__dict__, "data": data, "datacontenttype": datacontenttype})
    headers, body = encode_nats(event, mode="binary")
    sdk_event = sdk_http.from_binary(sdk_http.HTTPMessage(headers=headers, body=body), JSONFormat())
    assert sdk_event.get_id() == event.id
    assert sdk_event.get_subject() == event.subject
    assert sdk_event.get_time() == event.time
    # The SDK percent-encodes everything but letters and digits (quote(safe="")): needless
    # encoding the spec says receivers MUST accept.
    message = sdk_http.to_binary(sdk_event, JSONFormat())
    assert_same(decode_nats(message.headers, message.body), event)
