"""The JSON event format (single events and batches)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import orjson

from backbone._events._model import CloudEvent
from backbone.errors import BindingError, EventError

if TYPE_CHECKING:
    from collections.abc import Sequence

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"


def _dumps(obj: object, event_id: str | None) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise EventError(
            f"data is not representable as JSON: {exc}", attribute="data", event_id=event_id
        ) from None


def _loads(raw: bytes | bytearray | memoryview | str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BindingError(f"not valid UTF-8 JSON: {exc}") from None


def to_json(event: CloudEvent) -> bytes:
    """Serialize an event in the JSON event format (``application/cloudevents+json``).

    Raises:
        EventError: `data` is not representable as JSON (attribute ``data``).
    """
    return _dumps(event.to_dict(), event.id)


def from_json(raw: bytes | bytearray | memoryview | str) -> CloudEvent:
    """Parse one event in the JSON event format.

    Raises:
        BindingError: `raw` is not JSON.
        EventError: the object is not a valid CloudEvent (naming the attribute).
    """
    obj = _loads(raw)
    if not isinstance(obj, dict):
        raise EventError("a JSON format CloudEvent must be a JSON object")
    return CloudEvent.from_dict(obj)


def to_batch_json(events: Sequence[CloudEvent]) -> bytes:
    """Serialize events in the JSON batch format (``application/cloudevents-batch+json``).

    Raises:
        EventError: some event's `data` is not representable as JSON.
    """
    items = [event.to_dict() for event in events]
    try:
        return orjson.dumps(items)
    except TypeError:
        for event in events:  # find and name the culprit
            to_json(event)
        raise


def from_batch_json(raw: bytes | bytearray | memoryview | str) -> list[CloudEvent]:
    """Parse a JSON batch (an array of JSON format events; it may be empty).

    Raises:
        BindingError: `raw` is not JSON.
        EventError: the batch is not an array, or an item is invalid; the message starts with
            the item's index and ``attribute`` names the attribute at fault.
    """
    obj = _loads(raw)
    if not isinstance(obj, list):
        raise EventError("a JSON batch must be a JSON array of CloudEvents")
    events: list[CloudEvent] = []
    for index, item in enumerate(obj):
        try:
            events.append(CloudEvent.from_dict(item))
        except EventError as exc:
            raise type(exc)(
                f"batch item {index}: {exc}", attribute=exc.attribute, event_id=exc.event_id
            ) from None
    return events
