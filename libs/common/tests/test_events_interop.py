"""Interop with the official CloudEvents Python SDK, both its current (`cloudevents.core`) and its
legacy (`cloudevents.v1`) API: SDK-made events decode to the same event and ours convert back."""

from __future__ import annotations

from datetime import UTC, datetime

from cloudevents.core.bindings import common as sdk_common
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from cloudevents.v1 import conversion as legacy_conversion
from cloudevents.v1.http import CloudEvent as LegacyEvent
from cloudevents.v1.http import from_http as legacy_from_http

from backbone.events import CloudEvent, decode_nats, encode_nats, from_json, to_json

WHEN = datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def sdk_event(data: object = None, **attributes: object) -> SdkEvent:
    base = {"id": "A234-1234-1234", "source": "/mycontext", "type": "com.example.someevent"}
    return SdkEvent({**base, "time": WHEN, **attributes}, data)  # type: ignore[arg-type]


def ours(data: object = None, **attributes: object) -> CloudEvent:
    base = {"id": "A234-1234-1234", "source": "/mycontext", "type": "com.example.someevent"}
    return CloudEvent(**{**base, "time": WHEN, "data": data, **attributes})


def test_sdk_structured_json_decodes_to_the_same_event():
    made = sdk_event(
        {"appinfoA": "abc", "appinfoB": 123},
        datacontenttype="application/json",
        subject="Grüße €",
        comexampleothervalue=5,
        traceparent=TRACEPARENT,
    )
    message = sdk_http.to_structured(made, JSONFormat())
    decoded = decode_nats(message.headers, message.body)
    assert decoded == ours(
        {"appinfoA": "abc", "appinfoB": 123},
        datacontenttype="application/json",
        subject="Grüße €",
        comexampleothervalue=5,
        traceparent=TRACEPARENT,
    )
    assert decoded.extensions["comexampleothervalue"] == 5  # JSON keeps the Integer type
    assert decoded.traceparent == TRACEPARENT


def test_sdk_binary_message_decodes_to_the_same_event_and_encodes_headers_like_us():
    made = sdk_event(b"\x00\x01", datacontenttype="application/octet-stream", subject="a/b c:d €")
    message = sdk_http.to_binary(made, JSONFormat())
    expected = ours(b"\x00\x01", datacontenttype="application/octet-stream", subject="a/b c:d €")
    assert decode_nats(message.headers, message.body) == expected
    headers, _ = encode_nats(expected)
    for name, value in message.headers.items():
        if name.startswith("ce-"):
            assert headers[name] == value


def test_needless_percent_encoding_from_the_sdk_common_encoder_is_accepted():
    # cloudevents.core.bindings.common encodes everything but letters and digits (quote(safe="")).
    made = sdk_event(subject="a/b c:d €", n=5)
    headers = {
        f"ce-{k}": sdk_common.encode_header_value(v) for k, v in made.get_attributes().items()
    }
    assert headers["ce-source"] == "%2Fmycontext"
    assert decode_nats(headers, b"") == ours(subject="a/b c:d €", n=5)


def test_sdk_binary_data_base64_event_stays_binary():
    made = sdk_event(b"\xde\xad", datacontenttype="application/vnd.apache.thrift.binary")
    decoded = from_json(JSONFormat().write(made))
    assert decoded.data == b"\xde\xad"
    assert decoded.to_dict()["data_base64"] == "3q0="


def test_our_structured_event_reads_in_the_sdk():
    event = ours({"a": [1, 2]}, datacontenttype="application/json", subject="ü", n=7)
    headers, payload = encode_nats(event, mode="structured")
    read = sdk_http.from_http(sdk_http.HTTPMessage(headers=headers, body=payload), JSONFormat())
    assert read.get_data() == {"a": [1, 2]}
    assert read.get_subject() == "ü"
    assert read.get_extension("n") == 7
    assert read.get_time() == WHEN


def test_our_binary_event_reads_in_the_sdk_with_percent_decoding():
    event = ours(
        "<x/>", datacontenttype="application/xml", subject="Euro € 😀", traceparent=TRACEPARENT
    )
    headers, payload = encode_nats(event)
    read = sdk_http.from_binary(sdk_http.HTTPMessage(headers=headers, body=payload), JSONFormat())
    assert read.get_subject() == "Euro € 😀"
    assert read.get_datacontenttype() == "application/xml"
    assert read.get_data() == "<x/>"
    assert read.get_extension("traceparent") == TRACEPARENT
    back = sdk_http.to_binary(read, JSONFormat())
    assert decode_nats(back.headers, back.body) == event


def test_sdk_binary_json_without_content_type_is_opaque_bytes_to_us():
    # The SDK writes JSON data without setting the implied content type (a SHOULD the JSON format
    # spec states); with no content type a binary message's data is opaque, so we keep the bytes.
    message = sdk_http.to_binary(sdk_event({"a": 1}), JSONFormat())
    assert "content-type" not in message.headers
    assert decode_nats(message.headers, message.body).data == b'{"a": 1}'


def test_legacy_sdk_structured_and_binary_messages_decode_to_the_same_event():
    legacy = LegacyEvent(
        {
            "id": "A234-1234-1234",
            "source": "/mycontext",
            "type": "com.example.someevent",
            "time": "2018-04-05T17:31:00Z",
            "datacontenttype": "application/json",
            "subject": "Grüße €",
            "ext1": "x y",
        },
        {"k": "v"},
    )
    expected = ours({"k": "v"}, datacontenttype="application/json", subject="Grüße €", ext1="x y")
    headers, body = legacy_conversion.to_structured(legacy)
    assert decode_nats(headers, body) == expected
    # The legacy API writes raw, unencoded header values (pre-1.0.2 style); we accept them.
    headers, body = legacy_conversion.to_binary(legacy)
    assert headers["ce-subject"] == "Grüße €"
    assert decode_nats(headers, body) == expected


def test_our_events_read_in_the_legacy_sdk():
    event = ours({"k": "v"}, datacontenttype="application/json", subject="plain", n=3)
    legacy = legacy_from_http({"content-type": "application/cloudevents+json"}, to_json(event))
    assert legacy.data == {"k": "v"}
    assert legacy["subject"] == "plain"
    assert legacy["n"] == 3
    headers, payload = encode_nats(event)
    legacy = legacy_from_http(headers, payload)
    assert legacy.data == {"k": "v"}
    assert legacy["id"] == event.id
    assert from_json(legacy_conversion.to_json(legacy)) == event
