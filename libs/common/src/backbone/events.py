"""CloudEvents v1.0 for Backbone: the event model, the JSON event format and the NATS binding.

Every event on the bus is a :class:`CloudEvent`. This module is the one place that knows the
spec (``shared/specs/cloudevents``): the model checks every rule on construction, the JSON format
(:func:`to_json`/:func:`from_json` and the batch variants) and the NATS protocol binding
(:func:`encode_nats`/:func:`decode_nats`, binary and structured content modes) convert losslessly,
and the header helpers implement the bindings' percent-encoding for reuse by the HTTP gateway.

Example::

    event = CloudEvent.create(type="mcp.server.error", source="/claude/mcp/filesystem",
                              subject="server-123", data={"error": "Connection timeout"})
    headers, payload = encode_nats(event)          # binary mode, ce-* headers
    headers["Nats-Msg-Id"] = dedup_id(event)
    assert decode_nats(headers, payload) == event

All failures raise :class:`~backbone.errors.EventError` (or its subclass
:class:`~backbone.errors.BindingError` for undecodable messages) with ``attribute`` naming the
attribute at fault.
"""

from __future__ import annotations

from backbone._events._binding import (
    CE_HEADER_PREFIX,
    data_to_bytes,
    decode_nats,
    dedup_id,
    encode_nats,
    from_binary_parts,
    to_binary_parts,
)
from backbone._events._format import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    from_batch_json,
    from_json,
    to_batch_json,
    to_json,
)
from backbone._events._model import (
    CORE_ATTRIBUTES,
    SPECVERSION,
    CloudEvent,
    ExtensionValue,
)
from backbone._events._values import (
    attribute_to_string,
    format_timestamp,
    is_json_content_type,
    parse_timestamp,
)
from backbone._events._values import decode_header_value as decode_http_header_value
from backbone._events._values import encode_header_value as encode_http_header_value

to_structured_json = to_json
"""Alias of :func:`to_json` (the structured-mode body), the name the helpers' brief uses."""

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CE_HEADER_PREFIX",
    "CORE_ATTRIBUTES",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "CloudEvent",
    "ExtensionValue",
    "attribute_to_string",
    "data_to_bytes",
    "decode_http_header_value",
    "decode_nats",
    "dedup_id",
    "encode_http_header_value",
    "encode_nats",
    "format_timestamp",
    "from_batch_json",
    "from_binary_parts",
    "from_json",
    "is_json_content_type",
    "parse_timestamp",
    "to_batch_json",
    "to_binary_parts",
    "to_json",
    "to_structured_json",
]
