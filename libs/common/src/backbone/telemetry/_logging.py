"""Structured logs: one JSON object per line, carrying the active trace and span ids."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import orjson
from opentelemetry import trace

if TYPE_CHECKING:
    from collections.abc import Mapping

LogFormat = Literal["json", "text"]

# Everything a LogRecord carries by itself; any other attribute came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
) | {"message", "asctime", "taskName", "color_message"}  # uvicorn adds color_message
# Keys the formatter owns; an `extra` field with one of these names is kept under "extra_<key>".
_RESERVED_KEYS: Final = frozenset(
    {"time", "level", "logger", "message", "service", "trace_id", "span_id", "exception"}
)
# Marks handlers installed by configure_logging, so a second call replaces only those and
# leaves others (pytest's caplog handler, a user's file handler) alone.
_MARKER: Final = "_backbone_handler"


def _trace_ids(record: logging.LogRecord) -> tuple[str, str] | None:
    explicit = getattr(record, "trace_id", None), getattr(record, "span_id", None)
    if isinstance(explicit[0], str) and isinstance(explicit[1], str):
        return explicit[0], explicit[1]
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and key not in {"trace_id", "span_id"}
    }


def _json_default(value: object) -> str:
    # Anything orjson cannot encode (Path, Decimal, custom objects) is logged by its str().
    return str(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newline inside) for log shippers.

    Keys: ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message``,
    ``service``, ``trace_id`` and ``span_id`` (hex, when a span is active), every ``extra=``
    field at top level (renamed ``extra_<key>`` if it collides with one of these), and
    ``exception`` (the formatted traceback) plus ``exc_type`` when exception info is attached.
    """

    def __init__(self, *, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service_name,
        }
        ids = _trace_ids(record)
        if ids is not None:
            payload["trace_id"], payload["span_id"] = ids
        for key, value in _extras(record).items():
            payload[f"extra_{key}" if key in _RESERVED_KEYS else key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
            if record.exc_info[0] is not None:
                payload["exc_type"] = record.exc_info[0].__qualname__
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(payload, default=_json_default).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with ``extra`` fields and trace ids appended."""

    def __init__(self, *, service_name: str) -> None:
        super().__init__("%(asctime)s %(levelname)-8s %(name)s: %(message)s")
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        suffix = [f"{key}={value!r}" for key, value in _extras(record).items()]
        ids = _trace_ids(record)
        if ids is not None:
            suffix.append(f"trace_id={ids[0]} span_id={ids[1]}")
        if not suffix:
            return line
        first, sep, rest = line.partition("\n")  # keep the traceback after the key=values
        return f"{first} {' '.join(suffix)}{sep}{rest}"


def configure_logging(
    *,
    level: str | int = "INFO",
    fmt: LogFormat = "json",
    service_name: str,
    stream: IO[str] | None = None,
    levels: Mapping[str, str | int] | None = None,
) -> logging.Handler:
    """Send the root logger's records to ``stream`` as JSON lines (or text), with trace ids.

    Calling it again replaces the handler it installed earlier and nothing else, so pytest's
    ``caplog`` and handlers added by the application keep working.

    Args:
        level: Root log level (``"INFO"``, ``logging.DEBUG``, ...).
        fmt: ``"json"`` for one object per line, ``"text"`` for a terminal.
        service_name: Written into every JSON record as ``service``.
        stream: Where lines go; default ``sys.stderr``, keeping stdout for command output
            (``backbone tail`` prints events there).
        levels: Per-logger levels, e.g. ``{"nats": "WARNING"}``.

    Returns:
        The installed handler (tests read or remove it).
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _MARKER, False):
            root.removeHandler(existing)
            existing.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(service_name=service_name)
        if fmt == "json"
        else TextFormatter(service_name=service_name)
    )
    handler.setFormatter(formatter)
    setattr(handler, _MARKER, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name, logger_level in (levels or {}).items():
        logging.getLogger(name).setLevel(
            logger_level.upper() if isinstance(logger_level, str) else logger_level
        )
    return handler
