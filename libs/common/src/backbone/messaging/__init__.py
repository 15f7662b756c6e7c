"""Messaging on JetStream: streams from one file, publishing, consuming, dead letters.

Public API::

    catalog = load_catalog()                       # deploy/streams.yaml
    await apply_streams(js, catalog)               # idempotent, returns the changes
    publisher = Publisher(nc, catalog=catalog)
    result = await publisher.publish(event)        # after the PubAck: stream, seq, duplicate
    consumer = Consumer(nc, stream="MCP_EVENTS", durable="worker", handler=handle)
    await consumer.start(); ...; await consumer.stop()
"""

from backbone.messaging._connect import connect, connect_options
from backbone.messaging._consume import (
    DLQ_HEADERS,
    Consumer,
    ConsumerStats,
    Delivery,
    dlq_subject,
    wait_until_idle,
)
from backbone.messaging._dlq import DLQ_STREAM, DeadLetter, list_dead_letters, replay_dead_letter
from backbone.messaging._idempotency import (
    IDEMPOTENCY_BUCKET,
    IdempotencyStore,
    PostgresIdempotency,
)
from backbone.messaging._jetstream import JetStreamSender, encode_headers, sender_for
from backbone.messaging._publish import (
    EXPECTED_STREAM_HEADER,
    MSG_ID_HEADER,
    PreparedMessage,
    Publisher,
    PublishResult,
)
from backbone.messaging._streams import (
    ApplyChange,
    BucketSpec,
    StreamCatalog,
    StreamSpec,
    apply_streams,
    find_streams_file,
    is_subject_pattern,
    load_catalog,
    parse_duration_s,
    subject_covers,
    subject_for,
    subject_matches,
)

__all__ = [
    "DLQ_HEADERS",
    "DLQ_STREAM",
    "EXPECTED_STREAM_HEADER",
    "IDEMPOTENCY_BUCKET",
    "MSG_ID_HEADER",
    "ApplyChange",
    "BucketSpec",
    "Consumer",
    "ConsumerStats",
    "DeadLetter",
    "Delivery",
    "IdempotencyStore",
    "JetStreamSender",
    "PostgresIdempotency",
    "PreparedMessage",
    "PublishResult",
    "Publisher",
    "StreamCatalog",
    "StreamSpec",
    "apply_streams",
    "connect",
    "connect_options",
    "dlq_subject",
    "encode_headers",
    "find_streams_file",
    "is_subject_pattern",
    "list_dead_letters",
    "load_catalog",
    "parse_duration_s",
    "replay_dead_letter",
    "sender_for",
    "subject_covers",
    "subject_for",
    "subject_matches",
    "wait_until_idle",
]
