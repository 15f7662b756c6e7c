"""Names and advisory-lock classes shared by the library, the relay and the migrations."""

from __future__ import annotations

from typing import Final

OUTBOX_TABLE: Final = "backbone_outbox"
DEAD_TABLE: Final = "backbone_outbox_dead"
MIGRATIONS_TABLE: Final = "backbone_outbox_migrations"
NOTIFY_CHANNEL: Final = "backbone_outbox"

PARTITIONS: Final = 64
"""Hash partitions of the ordering keys (``hashtext(key) & 63``, fixed by migration 0001)."""

# Two-key advisory locks (class, object): class numbers picked to be unlikely elsewhere.
LOCK_CLASS_KEY: Final = 2977
"""Transaction lock per ordering key taken by ``enqueue`` (object = ``hashtext(key)``)."""
LOCK_CLASS_PARTITION: Final = 2978
"""Session lock per partition held by the relay that owns it (object = partition)."""
LOCK_CLASS_MEMBER: Final = 2979
"""Session lock each live relay holds (object = its backend pid); counting them sizes shares."""
LOCK_CLASS_MIGRATE: Final = 2980
"""Transaction lock serialising migrators (object 0) and housekeepers (object 1)."""

# Columns copied between the outbox and the dead-letter table, in one order everywhere.
ROW_COLUMNS: Final = (
    "ordering_key",
    "subject",
    "msg_id",
    "event_id",
    "event_source",
    "event_type",
    "headers",
    "payload",
    "traceparent",
    "tracestate",
    "created_at",
    "attempts",
)
