from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from backbone.telemetry import configure_logging


@pytest.fixture
def stream():
    buffer = io.StringIO()
    yield buffer
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_backbone_handler", False):
            root.removeHandler(handler)


def _lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_standard_fields_and_extras(stream):
    configure_logging(level="INFO", fmt="json", service_name="gateway", stream=stream)
    logging.getLogger("backbone.test").info(
        "published %s", "evt-1", extra={"stream": "MCP_EVENTS", "seq": 7, "path": object()}
    )
    (record,) = _lines(stream)
    assert record["level"] == "INFO"
    assert record["logger"] == "backbone.test"
    assert record["message"] == "published evt-1"
    assert record["service"] == "gateway"
    assert record["stream"] == "MCP_EVENTS"
    assert record["seq"] == 7
    assert record["path"].startswith("<object object")  # unknown types logged as str()
    assert record["time"].endswith("Z")
    assert "trace_id" not in record


def test_json_lines_carry_trace_and_span_ids_of_the_active_span(stream):
    configure_logging(level="DEBUG", fmt="json", service_name="svc", stream=stream)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("x").debug("inside")
        ctx = span.get_span_context()
    (record,) = _lines(stream)
    assert record["trace_id"] == f"{ctx.trace_id:032x}"
    assert record["span_id"] == f"{ctx.span_id:016x}"


def test_exceptions_are_logged_with_type_and_traceback_on_one_line(stream):
    configure_logging(level="INFO", fmt="json", service_name="svc", stream=stream)
    try:
        raise ValueError("bad value")  # noqa: TRY301
    except ValueError:
        logging.getLogger("x").exception("handler failed")
    assert len(stream.getvalue().splitlines()) == 1
    (record,) = _lines(stream)
    assert record["exc_type"] == "ValueError"
    assert "ValueError: bad value" in record["exception"]
    assert "Traceback" in record["exception"]


def test_extra_fields_never_overwrite_the_standard_ones(stream):
    configure_logging(level="INFO", fmt="json", service_name="svc", stream=stream)
    logging.getLogger("x").info("m", extra={"service": "spoofed", "level": "x"})
    (record,) = _lines(stream)
    assert record["service"] == "svc"
    assert record["extra_service"] == "spoofed"
    assert record["level"] == "INFO"


def test_reconfiguring_replaces_only_our_handler_and_keeps_caplog(stream, caplog):
    configure_logging(level="INFO", fmt="json", service_name="svc", stream=io.StringIO())
    configure_logging(level="INFO", fmt="json", service_name="svc", stream=stream)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_backbone_handler", False)]
    assert len(ours) == 1
    with caplog.at_level(logging.INFO):
        logging.getLogger("y").info("seen by both", extra={"k": 1})
    assert [r.getMessage() for r in caplog.records] == ["seen by both"]
    assert _lines(stream)[0]["k"] == 1


def test_text_format_appends_extras_and_trace_ids(stream):
    configure_logging(level="INFO", fmt="text", service_name="svc", stream=stream)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("work"):
        logging.getLogger("z").warning("careful", extra={"subject": "a.b"})
    line = stream.getvalue().strip()
    assert "WARNING" in line
    assert "z: careful" in line
    assert "subject='a.b'" in line
    assert "trace_id=" in line
