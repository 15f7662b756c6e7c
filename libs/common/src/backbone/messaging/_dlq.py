"""Dead letters: list them and replay them to their original subject, keeping the event id."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from backbone.errors import StreamError
from backbone.events import decode_nats, dedup_id
from backbone.messaging._consume import DLQ_PREFIX

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.js import JetStreamContext, api

DLQ_STREAM = "DLQ"
_REPLAY_ATTEMPT_HEADER = "Backbone-Replayed-From-Dlq"


@dataclass(frozen=True)
class DeadLetter:
    """One message in the DLQ stream."""

    seq: int
    subject: str
    original_subject: str
    original_stream: str | None
    original_seq: int | None
    delivery_count: int | None
    error_type: str | None
    error_message: str | None
    event_id: str | None
    event_type: str | None
    headers: Mapping[str, str]
    data: bytes

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly summary (no payload)."""
        return {
            "seq": self.seq,
            "subject": self.subject,
            "original_subject": self.original_subject,
            "original_stream": self.original_stream,
            "original_seq": self.original_seq,
            "delivery_count": self.delivery_count,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "event_id": self.event_id,
            "event_type": self.event_type,
        }


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _undead(subject: str) -> str:
    return subject.removeprefix(DLQ_PREFIX + ".")


def _to_dead_letter(seq: int, subject: str, headers: Mapping[str, str], data: bytes) -> DeadLetter:
    event_id = event_type = None
    with contextlib.suppress(Exception):  # a dead letter may be undecodable: that is why it is here
        event = decode_nats(headers, data)
        event_id, event_type = event.id, event.type
    return DeadLetter(
        seq=seq,
        subject=subject,
        original_subject=headers.get("Backbone-Original-Subject", _undead(subject)),
        original_stream=headers.get("Backbone-Original-Stream"),
        original_seq=_int(headers.get("Backbone-Original-Sequence")),
        delivery_count=_int(headers.get("Backbone-Delivery-Count")),
        error_type=headers.get("Backbone-Error-Type"),
        error_message=headers.get("Backbone-Error-Message"),
        event_id=event_id,
        event_type=event_type,
        headers=dict(headers),
        data=data,
    )


async def list_dead_letters(
    js: JetStreamContext, *, limit: int = 100, stream: str = DLQ_STREAM
) -> list[DeadLetter]:
    """The first ``limit`` dead letters still in the DLQ stream, oldest first."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError as exc:
        raise StreamError(
            f"stream {stream} does not exist: run `backbone streams apply`", stream=stream
        ) from exc
    letters: list[DeadLetter] = []
    seq = info.state.first_seq
    while seq <= info.state.last_seq and len(letters) < limit:
        try:
            raw = await js.get_msg(stream, seq=seq, next=True)
        except nats.js.errors.NotFoundError:
            break
        letters.append(
            _to_dead_letter(raw.seq or seq, raw.subject or "", raw.headers or {}, raw.data or b"")
        )
        seq = (raw.seq or seq) + 1
    return letters


async def replay_dead_letter(
    js: JetStreamContext, letter: DeadLetter, *, stream: str = DLQ_STREAM
) -> api.PubAck:
    """Publish ``letter`` again on its original subject and remove it from the DLQ.

    The event keeps its id; its ``Nats-Msg-Id`` is suffixed with the DLQ sequence so that a replay
    inside the original duplicate window is not dropped as a duplicate of the first delivery.
    """
    headers = {k: v for k, v in letter.headers.items() if not k.startswith("Backbone-")}
    headers.pop("Nats-Msg-Id", None)
    with contextlib.suppress(Exception):
        headers["Nats-Msg-Id"] = (
            f"{dedup_id(decode_nats(letter.headers, letter.data))}:replay:{letter.seq}"
        )
    headers[_REPLAY_ATTEMPT_HEADER] = str(letter.seq)
    ack = await js.publish(letter.original_subject, letter.data, headers=headers)
    with contextlib.suppress(nats.js.errors.NotFoundError, nats.errors.TimeoutError):
        await js.delete_msg(stream, letter.seq)
    return ack
