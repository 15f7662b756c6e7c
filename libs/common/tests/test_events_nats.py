"""NATS protocol binding (binary and structured modes) and the bindings' header percent-encoding."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from backbone.errors import BindingError, EventError
from backbone.events import (
    CloudEvent,
    decode_http_header_value,
    decode_nats,
    dedup_id,
    encode_http_header_value,
    encode_nats,
    from_binary_parts,
    from_json,
    to_binary_parts,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def sample() -> CloudEvent:
    return CloudEvent.create(
        type="mcp.server.error",
        source="/claude/mcp/filesystem",
        subject="server-123",
        id="1234-1234-1234",
        time=datetime(2018, 4, 5, 3, 56, 24, tzinfo=UTC),
        data={"error": "Connection timeout", "severity": 0.8},
        extensions={"traceparent": TRACEPARENT, "count": 3, "urgent": True},
    )


# --- percent-encoding vectors (HTTP and NATS bindings, section 3.1.3.2) ---------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("Euro \u20ac \U0001f600", "Euro%20%E2%82%AC%20%F0%9F%98%80"),  # the spec's example
        ('say "hi"', "say%20%22hi%22"),
        ("100%", "100%25"),
        ("tab\there", "tab%09here"),
        ("del\x7f", "del%7F"),
        ("nbsp\u00a0", "nbsp%C2%A0"),
        ("!#$&'()*+,-./:;<=>?@[\\]^_`{|}~", "!#$&'()*+,-./:;<=>?@[\\]^_`{|}~"),
        ("plain-ascii_1.0", "plain-ascii_1.0"),
        ("", ""),
    ],
)
def test_percent_encoding_matches_the_spec(value, encoded):
    assert encode_http_header_value(value) == encoded
    assert decode_http_header_value(encoded) == value


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Euro%20%e2%82%ac%20%f0%9f%98%80", "Euro \u20ac \U0001f600"),  # lower-case hex accepted
        ("%41%42C", "ABC"),  # unnecessary encoding accepted
        ('"hello world"', "hello world"),  # quoted-string from older producers
        ('"a \\"quoted\\" \\\\ word"', 'a "quoted" \\ word'),
        ('pre "mid dle" post', "pre mid dle post"),
        ('"100%25"', "100%"),  # unquote first, then one round of percent-decoding
        ("%2525", "%25"),  # exactly one round
        ("  padded\t", "padded"),  # optional whitespace around the value
    ],
)
def test_decoding_accepts_what_the_spec_requires(header, value):
    assert decode_http_header_value(header) == value


@pytest.mark.parametrize(
    "header",
    [
        "%C0%A0",  # the spec's overlong encoding of U+0020
        "%ED%A0%80",  # an encoded surrogate
        "%FF",
        "%E2%82",  # truncated sequence
        "%zz",
        "abc%4",
        "%",
        '"unterminated',
        '"dangling\\',
    ],
)
def test_decoding_rejects_invalid_escapes_and_utf8(header):
    with pytest.raises(BindingError):
        decode_http_header_value(header)


# --- binary mode ------------------------------------------------------------------------------


def test_binary_mode_headers_follow_the_spec_example():
    headers, payload = encode_nats(sample())
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "1234-1234-1234",
        "ce-source": "/claude/mcp/filesystem",
        "ce-type": "mcp.server.error",
        "ce-datacontenttype": "application/json",
        "ce-subject": "server-123",
        "ce-time": "2018-04-05T03:56:24Z",
        "ce-traceparent": TRACEPARENT,
        "ce-count": "3",
        "ce-urgent": "true",
        "Content-Type": "application/json",
    }
    assert payload == b'{"error":"Connection timeout","severity":0.8}'
    assert decode_nats(headers, payload) == sample()


def test_binary_mode_percent_encodes_non_ascii_and_specials():
    event = CloudEvent(id="id 1", source="/a%20b", type="t", subject="Grüße \u20ac", note='"q"')
    headers, _ = encode_nats(event)
    assert headers["ce-id"] == "id%201"
    assert headers["ce-source"] == "/a%2520b"
    assert headers["ce-subject"] == "Gr%C3%BC%C3%9Fe%20%E2%82%AC"
    assert headers["ce-note"] == "%22q%22"
    for value in headers.values():
        assert all("!" <= char <= "~" for char in value)
    assert decode_nats(headers, b"") == event


def test_binary_mode_decodes_header_names_case_insensitively():
    headers = {
        "CE-SpecVersion": "1.0",
        "Ce-Id": "1",
        "ce-SOURCE": "/s",
        "ce-type": "t",
        "CE-DataContentType": "text/plain",
        "Ce-MyExt": "x",
    }
    event = decode_nats(headers, b"hi")
    assert event.datacontenttype == "text/plain"
    assert event.extensions == {"myext": "x"}
    assert event.data == b"hi"


def test_binary_mode_falls_back_to_content_type_and_prefers_ce_datacontenttype():
    base = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    http_style = decode_nats({**base, "content-type": "application/json"}, b"[1, 2]")
    assert http_style.datacontenttype == "application/json"
    assert http_style.data == [1, 2]
    both = decode_nats(
        {**base, "ce-datacontenttype": "text/plain", "Content-Type": "application/json"}, b"[1"
    )
    assert both.datacontenttype == "text/plain"
    assert both.data == b"[1"


def test_binary_mode_data_depends_on_the_content_type():
    base = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    assert decode_nats(base, b'{"a":1}').data == b'{"a":1}'  # no type: no JSON assumption
    assert decode_nats(base, b"").data is None
    typed = {**base, "ce-datacontenttype": "application/vnd.x+json; charset=utf-8"}
    assert decode_nats(typed, b'{"a":1}').data == {"a": 1}
    assert decode_nats(typed, b"").data is None
    assert decode_nats(typed, b"null").data is None


def test_binary_mode_does_not_copy_a_cloudevents_content_type_to_content_type():
    inner = CloudEvent.create(type="t", source="/s", data={"x": 1})
    outer = CloudEvent.create(
        type="wrapped",
        source="/s",
        data=inner.to_dict(),
        datacontenttype="application/cloudevents+json",
    )
    headers, payload = encode_nats(outer)
    assert "Content-Type" not in headers
    assert decode_nats(headers, payload) == outer


def test_binary_parts_carry_canonical_strings():
    attributes, payload = to_binary_parts(sample())
    assert attributes["time"] == "2018-04-05T03:56:24Z"
    assert attributes["count"] == "3"
    assert from_binary_parts(attributes, payload) == sample()


@pytest.mark.parametrize(
    ("headers", "payload", "attribute"),
    [
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s"}, b"", "type"),
        (
            {"ce-specversion": "0.3", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
            b"",
            "specversion",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "ce-time": "now",
            },
            b"",
            "time",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "%C0%A0", "ce-source": "/s", "ce-type": "t"},
            b"",
            "id",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-": "x"},
            b"",
            "",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "ce-my_ext": "x",
            },
            b"",
            "my_ext",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "ce-data": "x",
            },
            b"",
            "data",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "ce-traceparent": "x",
            },
            b"",
            "traceparent",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "ce-datacontenttype": "application/json",
            },
            b"{",
            "data",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "ce-subject": "%0A",
            },
            b"",
            "subject",
        ),
        ({"ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"", "specversion"),
    ],
)
def test_bad_binary_messages_name_the_attribute(headers, payload, attribute):
    with pytest.raises(EventError) as info:
        decode_nats(headers, payload)
    assert info.value.attribute == attribute


def test_duplicate_headers_differing_in_case_are_rejected():
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "CE-ID": "2",
        "ce-source": "/s",
        "ce-type": "t",
    }
    with pytest.raises(BindingError, match="more than once"):
        decode_nats(headers, b"")


def test_invalid_utf8_in_a_header_is_a_binding_error():
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/s",
        "ce-type": "t",
        "ce-x": "%FF",
    }
    with pytest.raises(BindingError) as info:
        decode_nats(headers, b"")
    assert info.value.attribute == "x"


# --- structured mode and mode detection --------------------------------------------------------


def test_structured_mode_uses_the_json_format():
    headers, payload = encode_nats(sample(), mode="structured")
    assert headers == {"Content-Type": "application/cloudevents+json"}
    assert from_json(payload) == sample()
    assert decode_nats(headers, payload) == sample()


@pytest.mark.parametrize(
    "content_type",
    ["application/cloudevents+json", "Application/CloudEvents+JSON; charset=utf-8"],
)
def test_structured_mode_is_detected_case_insensitively(content_type):
    _, payload = encode_nats(sample(), mode="structured")
    assert decode_nats({"content-TYPE": content_type}, payload) == sample()


def test_structured_mode_wins_over_ce_headers():
    _, payload = encode_nats(sample(), mode="structured")
    headers = {
        "Content-Type": "application/cloudevents+json",
        "ce-specversion": "1.0",
        "ce-id": "x",
    }
    assert decode_nats(headers, payload).id == sample().id


@pytest.mark.parametrize(
    "content_type", ["application/cloudevents-batch+json", "application/cloudevents+avro"]
)
def test_unsupported_structured_formats_are_binding_errors(content_type):
    with pytest.raises(BindingError, match="unsupported"):
        decode_nats({"Content-Type": content_type}, b"[]")


@pytest.mark.parametrize("headers", [None, {}, {"Content-Type": "application/json"}])
def test_messages_in_neither_mode_are_binding_errors(headers):
    with pytest.raises(BindingError) as info:
        decode_nats(headers, b'{"specversion":"1.0","id":"1","source":"/s","type":"t"}')
    assert info.value.attribute == "specversion"


def test_bad_structured_payload_is_a_binding_error():
    with pytest.raises(BindingError):
        decode_nats({"Content-Type": "application/cloudevents+json"}, b"\xff\xfe")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        encode_nats(sample(), mode="batch")  # type: ignore[arg-type]


# --- over a real nats-server --------------------------------------------------------------------


async def test_both_modes_survive_a_real_nats_server(nats_client):
    event = CloudEvent.create(
        type="test.events.roundtrip",
        source="/tests/%C3%A9v%C3%A9nements",
        subject='Grüße "€" 100%',
        data=b"\x00\x01binary\xff",
        datacontenttype="application/octet-stream",
        extensions={"traceparent": TRACEPARENT, "n": -5, "flag": False, "note": "  spaced  "},
    )
    received: asyncio.Queue[CloudEvent] = asyncio.Queue()

    async def handler(msg):
        await received.put(decode_nats(msg.headers, msg.data))

    await nats_client.subscribe("test.events.>", cb=handler)
    for mode in ("binary", "structured"):
        headers, payload = encode_nats(event, mode=mode)
        headers["Nats-Msg-Id"] = dedup_id(event)
        await nats_client.publish("test.events.roundtrip", payload, headers=headers)
    await nats_client.flush()
    for _ in range(2):
        got = await asyncio.wait_for(received.get(), timeout=10)
        assert got == event
        assert to_binary_parts(got) == to_binary_parts(event)
