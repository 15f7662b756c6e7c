"""JSON event format (single and batch), checked against the spec's examples and JSON Schema."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import jsonschema_rs
import orjson
import pytest

from backbone.errors import BindingError, EventError
from backbone.events import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    from_batch_json,
    from_json,
    to_batch_json,
    to_json,
    to_structured_json,
)

SPECS = Path(__file__).resolve().parents[3].parent / "shared" / "specs" / "cloudevents"
SCHEMA = json.loads((SPECS / "cloudevents.json").read_text())
DRAFT7 = jsonschema.Draft7Validator(SCHEMA)
WITH_FORMATS = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)


def assert_valid_against_schema(obj: object) -> None:
    DRAFT7.validate(obj)
    WITH_FORMATS.validate(obj)  # jsonschema-rs also checks uri-reference, uri and date-time


def spec_json_examples() -> list[dict[str, object]]:
    """Every JSON object example in the JSON format and core specs (both versions)."""
    examples = []
    for path in [SPECS / "json-format.md", SPECS / "spec.md", SPECS / "v1.0.2" / "json-format.md"]:
        for block in re.findall(r"```JSON\n(.*?)```", path.read_text(), flags=re.DOTALL):
            if "..." in block.replace('"... base64 encoded string ..."', '""'):
                continue  # elided examples
            obj = json.loads(block.replace('"... base64 encoded string ..."', '"AAEC"'))
            if isinstance(obj, dict) and "specversion" in obj:
                examples.append(obj)
    return examples


EXAMPLES = spec_json_examples()


def test_the_spec_examples_were_found():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: str(e["id"]))
def test_spec_examples_round_trip_through_the_json_format(example):
    event = from_json(json.dumps(example))
    expected = {key: value for key, value in example.items() if value is not None}
    if "data" in expected and "datacontenttype" not in expected:
        expected["datacontenttype"] = "application/json"  # the implied value, made explicit
    assert event.to_dict() == expected
    assert from_json(to_json(event)) == event
    assert_valid_against_schema(orjson.loads(to_json(event)))


def test_xml_example_keeps_string_data_and_unset_extension_is_dropped():
    example = next(e for e in EXAMPLES if e["id"] == "B234-1234-1234")
    event = CloudEvent.from_dict(example)
    assert event.data == '<much wow="xml"/>'
    assert "unsetextension" not in event.extensions
    assert event.extensions == {"comexampleextension1": "value", "comexampleothervalue": 5}


def test_data_base64_without_content_type_stays_bytes():
    event = from_json(
        '{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext",'
        '"id":"D234-1234-1234","data_base64":"eyAieHl6IjogMTIzIH0="}'
    )
    assert event.data == b'{ "xyz": 123 }'
    assert event.datacontenttype is None
    assert "datacontenttype" not in event.to_dict()


def test_bytes_are_written_as_data_base64_and_json_as_data():
    binary = CloudEvent.create(type="t", source="/s", data=b"\x00\xff", datacontenttype="image/png")
    assert binary.to_dict()["data_base64"] == "AP8="
    assert "data" not in binary.to_dict()
    js = CloudEvent.create(type="t", source="/s", data={"k": [1, "two", None]})
    assert js.to_dict()["data"] == {"k": [1, "two", None]}
    assert "data_base64" not in js.to_dict()


def test_json_string_data_is_not_parsed_again():
    event = from_json(
        '{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"{\\"a\\":1}"}'
    )
    assert event.data == '{"a":1}'


def test_time_is_serialized_canonically():
    event = CloudEvent(id="1", source="/s", type="t", time="2018-04-05T17:31:00.5+00:00")
    assert event.to_dict()["time"] == "2018-04-05T17:31:00.500000Z"
    assert event.time == datetime(2018, 4, 5, 17, 31, 0, 500000, tzinfo=UTC)


def test_extension_types_survive_the_json_format():
    event = CloudEvent(id="1", source="/s", type="t", i=-7, b=False, s="x", raw=b"\x01\x02")
    back = from_json(to_json(event))
    assert back.extensions == {"i": -7, "b": False, "s": "x", "raw": "AQI="}
    assert back == event


@pytest.mark.parametrize(
    ("raw", "attribute"),
    [
        (
            '{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}',
            "data_base64",
        ),
        ('{"specversion":"1.0","id":"1","source":"/s","type":"t","n":1.0}', "n"),
        ('{"specversion":"1.0","id":"1","source":"/s","type":"t","n":[1]}', "n"),
        ('{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}', "time"),
        ('{"specversion":"1.0","id":"1","source":"/s"}', "type"),
        ('{"id":"1","source":"/s","type":"t"}', "specversion"),
        (
            '{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":{}}',
            "data",
        ),
    ],
)
def test_bad_json_events_name_the_attribute(raw, attribute):
    with pytest.raises(EventError) as info:
        from_json(raw)
    assert info.value.attribute == attribute


@pytest.mark.parametrize("raw", [b"{", b"\xff", "", b"[]", b"42"])
def test_undecodable_or_non_object_json_is_rejected(raw):
    with pytest.raises(EventError):
        from_json(raw)


def test_invalid_json_is_a_binding_error():
    with pytest.raises(BindingError):
        from_json(b"{not json")


def test_unserializable_data_names_data():
    event = CloudEvent(id="1", source="/s", type="t", data={1: "non-string key"})
    with pytest.raises(EventError) as info:
        to_json(event)
    assert info.value.attribute == "data"
    with pytest.raises(EventError) as info:
        to_batch_json([CloudEvent(id="0", source="/s", type="t"), event])
    assert info.value.attribute == "data"


def test_batch_round_trips_and_may_be_empty():
    events = [
        CloudEvent.create(type="a", source="/s", data={"n": 1}),
        CloudEvent.create(type="b", source="urn:x", data=b"\x01", datacontenttype="image/png"),
        CloudEvent.create(type="c", source="/s", data="<x/>", datacontenttype="application/xml"),
    ]
    raw = to_batch_json(events)
    assert from_batch_json(raw) == events
    for obj in orjson.loads(raw):
        assert_valid_against_schema(obj)
    assert from_batch_json(to_batch_json([])) == []
    assert to_batch_json([]) == b"[]"


def test_batch_item_errors_say_which_item_and_attribute():
    raw = (
        '[{"specversion":"1.0","id":"1","source":"/s","type":"t"},'
        '{"specversion":"1.0","id":"2","source":"/s","type":""}]'
    )
    with pytest.raises(EventError, match="batch item 1") as info:
        from_batch_json(raw)
    assert info.value.attribute == "type"
    assert info.value.event_id == "2"
    with pytest.raises(EventError, match="batch item 0"):
        from_batch_json("[1]")
    with pytest.raises(EventError, match="array"):
        from_batch_json('{"specversion":"1.0"}')


def test_content_type_constants_and_alias():
    assert STRUCTURED_CONTENT_TYPE == "application/cloudevents+json"
    assert BATCH_CONTENT_TYPE == "application/cloudevents-batch+json"
    event = CloudEvent.create(type="t", source="/s")
    assert to_structured_json(event) == to_json(event)


def test_output_is_compact_utf8_json():
    event = CloudEvent.create(type="t", source="/s", subject="Grüße €", data={"x": "ü"})
    raw = to_json(event)
    assert "Grüße €".encode() in raw
    assert b" " not in raw.replace("Grüße €".encode(), b"")
