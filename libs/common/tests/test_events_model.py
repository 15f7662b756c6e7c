"""The CloudEvent model enforces the spec and names the attribute at fault."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import backbone.events
from backbone.errors import EventError
from backbone.events import CloudEvent, attribute_to_string, dedup_id, parse_timestamp

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BASE: dict[str, Any] = {"id": "A234-1234-1234", "source": "/mycontext", "type": "com.example.x"}


def test_all_is_sorted_and_complete():
    exported = backbone.events.__all__
    # isort-style order, as ruff's RUF022 keeps it: CONSTANTS, Classes, functions
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert len(set(exported)) == len(exported)
    public = {
        name
        for name, value in vars(backbone.events).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("backbone")
    }
    assert public <= set(exported)
    for name in exported:
        assert hasattr(backbone.events, name)


def test_create_fills_id_time_specversion_and_json_content_type():
    before = datetime.now(UTC)
    event = CloudEvent.create(type="mcp.server.error", source="/claude/mcp/fs", data={"a": 1})
    assert uuid.UUID(event.id).version == 4
    assert event.specversion == "1.0"
    assert event.datacontenttype == "application/json"
    assert event.time is not None
    assert before <= event.time <= datetime.now(UTC)
    assert event.extensions == {}


def test_create_keeps_bytes_without_content_type_and_no_data_without_one():
    assert CloudEvent.create(type="t", source="/s", data=b"\x00\x01").datacontenttype is None
    assert CloudEvent.create(type="t", source="/s").datacontenttype is None


def test_constructor_moves_unknown_keywords_to_extensions_and_parses_time():
    event = CloudEvent(**BASE, comexampleextension1="value", time="2018-04-05T17:31:00Z")
    assert event.extensions == {"comexampleextension1": "value"}
    assert event.time == datetime(2018, 4, 5, 17, 31, tzinfo=UTC)


def test_events_are_frozen():
    event = CloudEvent(**BASE)
    with pytest.raises(ValueError, match="frozen"):
        event.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "attribute"),
    [
        ({"id": ""}, "id"),
        ({"id": None}, "id"),
        ({"id": 5}, "id"),
        ({"source": ""}, "source"),
        ({"source": "/a b"}, "source"),
        ({"source": "%zz"}, "source"),
        ({"source": "/caf\u00e9"}, "source"),  # an IRI, not a URI-reference
        ({"source": "1a:b"}, "source"),  # relative path whose first segment has a colon
        ({"type": ""}, "type"),
        ({"type": "a\nb"}, "type"),
        ({"type": "a\x85b"}, "type"),  # C1 control
        ({"type": "a\ufdd0"}, "type"),  # noncharacter
        ({"type": "a\ud800"}, "type"),  # unpaired surrogate
        ({"specversion": "0.3"}, "specversion"),
        ({"subject": ""}, "subject"),
        ({"datacontenttype": "json"}, "datacontenttype"),
        ({"datacontenttype": "application/json; charset"}, "datacontenttype"),
        ({"dataschema": "/relative/schema.json"}, "dataschema"),
        ({"dataschema": ""}, "dataschema"),
        ({"time": "2018-04-05 17:31:00Z"}, "time"),
        ({"time": "2018-04-05T17:31:00"}, "time"),
        ({"time": "2018-02-30T17:31:00Z"}, "time"),
        ({"time": "2018-04-05T17:31:00+24:00"}, "time"),
        ({"time": datetime(2018, 4, 5)}, "time"),  # noqa: DTZ001 - naive on purpose
        ({"time": 1522949460}, "time"),
        ({"Upper": "x"}, "Upper"),
        ({"with_underscore": "x"}, "with_underscore"),
        ({"extensions": {"data": "x"}}, "data"),
        ({"extensions": {"time": "x"}}, "time"),
        ({"big": 2**31}, "big"),
        ({"small": -(2**31) - 1}, "small"),
        ({"fl": 1.5}, "fl"),
        ({"obj": {"a": 1}}, "obj"),
        ({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"}, "traceparent"),
        ({"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, "traceparent"),
        ({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01"}, "traceparent"),
        ({"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "traceparent"),
        ({"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"}, "traceparent"),
        ({"traceparent": 5}, "traceparent"),
        ({"data": b"x", "data_base64": "eA=="}, "data_base64"),
        ({"data_base64": "not base64!"}, "data_base64"),
        ({"datacontenttype": "application/json", "data": b"{nope"}, "data"),
        ({"datacontenttype": "text/plain", "data": {"a": 1}}, "data"),
    ],
)
def test_invalid_events_raise_event_error_naming_the_attribute(changes, attribute):
    with pytest.raises(EventError) as info:
        CloudEvent(**{**BASE, **changes})
    assert info.value.attribute == attribute
    if "extensions" in changes:  # not a JSON format member
        return
    with pytest.raises(EventError) as info:
        CloudEvent.from_dict({"specversion": "1.0", **BASE, **changes})
    assert info.value.attribute == attribute


@pytest.mark.parametrize("missing", ["id", "source", "type"])
def test_missing_required_attribute_is_named(missing):
    values = {key: value for key, value in BASE.items() if key != missing}
    with pytest.raises(EventError, match="missing") as info:
        CloudEvent(**values)
    assert info.value.attribute == missing


def test_from_dict_requires_specversion_and_reports_event_id():
    with pytest.raises(EventError) as info:
        CloudEvent.from_dict({**BASE, "specversion": None})
    assert info.value.attribute == "specversion"
    assert info.value.event_id == BASE["id"]


def test_create_validates_too():
    with pytest.raises(EventError) as info:
        CloudEvent.create(type="t", source="/s", subject="")
    assert info.value.attribute == "subject"


def test_model_validate_reports_through_pydantic_validation_error():
    with pytest.raises(ValueError, match="source"):
        CloudEvent.model_validate({**BASE, "source": ""})


@pytest.mark.parametrize(
    "source",
    [
        "https://github.com/cloudevents",
        "mailto:cncf-wg-serverless@lists.cncf.io",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "cloudevents/spec/pull/123",
        "/sensors/tn-1234567/alerts",
        "1-555-123-4567",
        "/claude/mcp/filesystem",
        "//host:8080/p?q=1#frag",
        "http://[::1]:4222/x",
        "/caf%C3%A9",
    ],
)
def test_spec_example_sources_are_accepted(source):
    assert CloudEvent(**{**BASE, "source": source}).source == source


def test_long_extension_names_are_accepted_because_20_is_only_a_should():
    name = "a" * 40
    assert CloudEvent(**BASE, extensions={name: 1}).extensions == {name: 1}


def test_none_extension_is_unset():
    assert CloudEvent(**BASE, extensions={"a": None}, b=None).extensions == {}


def test_integer_extension_range_is_inclusive():
    event = CloudEvent(**BASE, lo=-(2**31), hi=2**31 - 1)
    assert event.extensions == {"lo": -(2**31), "hi": 2**31 - 1}


def test_with_extensions_adds_replaces_and_removes_and_validates():
    event = CloudEvent(**BASE, keep="k", drop="d")
    copy = event.with_extensions(traceparent=TRACEPARENT, tracestate="congo=t61rcWkgMzE", drop=None)
    assert copy.traceparent == TRACEPARENT
    assert copy.tracestate == "congo=t61rcWkgMzE"
    assert copy.extensions == {
        "keep": "k",
        "traceparent": TRACEPARENT,
        "tracestate": "congo=t61rcWkgMzE",
    }
    assert event.extensions == {"keep": "k", "drop": "d"}  # the original is untouched
    assert copy.id == event.id
    with pytest.raises(EventError) as info:
        event.with_extensions(traceparent="nope")
    assert info.value.attribute == "traceparent"
    with pytest.raises(EventError) as info:
        event.with_extensions(Bad=1)
    assert info.value.attribute == "Bad"


def test_traceparent_of_a_future_version_may_carry_more_fields():
    value = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"
    assert CloudEvent(**BASE, traceparent=value).traceparent == value


def test_bytes_data_with_json_content_type_is_parsed():
    event = CloudEvent(**BASE, datacontenttype="application/json", data=b'{"a": [1, 2]}')
    assert event.data == {"a": [1, 2]}


def test_data_base64_keyword_gives_bytes_and_property_reads_back():
    event = CloudEvent(**BASE, datacontenttype="image/png", data_base64="AAEC")
    assert event.data == b"\x00\x01\x02"
    assert event.data_base64 == "AAEC"
    assert CloudEvent(**BASE, data={"a": 1}).data_base64 is None


def test_json_data_without_content_type_gets_the_implied_application_json():
    assert CloudEvent(**BASE, data=[1]).datacontenttype == "application/json"


def test_empty_opaque_data_is_no_data():
    assert CloudEvent(**BASE, data=b"").data is None
    assert CloudEvent(**BASE, datacontenttype="text/plain", data="").data is None


def test_equality_compares_canonical_strings_of_extensions_and_opaque_data():
    typed = CloudEvent(
        **BASE, n=5, flag=True, blob=b"\x01", datacontenttype="text/plain", data="hé"
    )
    stringly = CloudEvent(
        **BASE, n="5", flag="true", blob="AQ==", datacontenttype="text/plain", data="hé".encode()
    )
    assert typed == stringly
    assert hash(typed) == hash(stringly)
    assert typed != CloudEvent(**BASE, n=6, flag=True, blob=b"\x01", datacontenttype="text/plain")
    assert CloudEvent(**BASE, data=1) != CloudEvent(**BASE, data=True)
    assert CloudEvent(**BASE, data={"a": 1}) != CloudEvent(**BASE, data={"a": 2})
    assert len({typed, stringly}) == 1


def test_time_is_kept_with_its_offset_and_fraction_truncated_to_microseconds():
    parsed = parse_timestamp("2018-04-05T17:31:00.123456789+05:30")
    assert parsed.microsecond == 123456
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)
    assert attribute_to_string(parsed) == "2018-04-05T17:31:00.123456+05:30"
    assert parse_timestamp("2018-04-05t17:31:00z") == datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
    assert parse_timestamp("2018-04-05T17:31:00-00:00").utcoffset() == timedelta(0)


def test_sub_minute_offsets_are_converted_to_utc():
    odd = timezone(timedelta(seconds=30))
    event = CloudEvent(**BASE, time=datetime(2018, 4, 5, 17, 31, 30, tzinfo=odd))
    assert attribute_to_string(event.time) == "2018-04-05T17:31:00Z"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-(2**31), "-2147483648"),
        ("x y", "x y"),
        (b"\xff\x00", base64.b64encode(b"\xff\x00").decode()),
        (datetime(2018, 4, 5, 3, 56, 24, tzinfo=UTC), "2018-04-05T03:56:24Z"),
    ],
)
def test_attribute_to_string_gives_canonical_encodings(value, expected):
    assert attribute_to_string(value) == expected


@pytest.mark.parametrize("value", [2**31, 1.5, None, [1], datetime(2018, 1, 1)])  # noqa: DTZ001
def test_attribute_to_string_rejects_values_without_a_cloudevents_type(value):
    with pytest.raises(EventError):
        attribute_to_string(value)


def test_dedup_id_is_stable_ascii_and_separates_source_from_id():
    one = CloudEvent(id="b", source="/a", type="t")
    assert dedup_id(one) == dedup_id(CloudEvent(id="b", source="/a", type="other", data=1))
    assert len(dedup_id(one)) == 32
    assert dedup_id(one).isascii()
    assert dedup_id(one) != dedup_id(CloudEvent(id="/b", source="/", type="t"))
    assert dedup_id(one) == hashlib.blake2b(b"/a\0b", digest_size=16).hexdigest()


def test_model_copy_with_update_is_validated():
    event = CloudEvent(**BASE, data={"a": 1})
    assert event.model_copy(update={"subject": "s"}).subject == "s"
    assert event.model_copy().data == {"a": 1}
    with pytest.raises(EventError) as info:
        event.model_copy(update={"source": "not a uri ref"})
    assert info.value.attribute == "source"


def test_attributes_lists_every_set_attribute_natively():
    event = CloudEvent(**BASE, time="2018-04-05T17:31:00Z", n=1)
    assert event.attributes() == {
        "specversion": "1.0",
        **BASE,
        "time": datetime(2018, 4, 5, 17, 31, tzinfo=UTC),
        "n": 1,
    }
