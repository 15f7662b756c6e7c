"""Publishing CloudEvents to JetStream: success only after the PubAck, deduplicated by id."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import nats.errors
import nats.js.errors

from backbone.errors import BackboneError, PublishError, PublishTimeoutError
from backbone.events import dedup_id, encode_nats
from backbone.messaging._streams import subject_for

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

    from backbone.events import CloudEvent
    from backbone.messaging._streams import StreamCatalog

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"

# Failures worth another attempt: the message may not have reached the stream, and because every
# publish carries its dedup id a retry that does reach it twice is dropped by JetStream.
_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where JetStream stored an event (reported only after its PubAck)."""

    id: str
    subject: str
    stream: str
    seq: int
    duplicate: bool

    def to_dict(self) -> dict[str, object]:
        """The JSON shape used by the CLI and the gateway."""
        return {
            "id": self.id,
            "subject": self.subject,
            "stream": self.stream,
            "seq": self.seq,
            "duplicate": self.duplicate,
        }


class Publisher:
    """Publishes CloudEvents to the stream that captures their subject.

    * ``Nats-Msg-Id`` is :func:`backbone.events.dedup_id` (source + id), so JetStream removes
      repeats inside the stream's duplicate window;
    * ``Nats-Expected-Stream`` names the stream from ``deploy/streams.yaml``, and an event whose
      subject no stream captures is refused before anything is sent;
    * a result is returned only after the PubAck; timeouts and connection failures are retried
      (bounded) — safe thanks to the dedup id.

    Args:
        nc: A connected nats-py client.
        catalog: The declared streams.
        mode: NATS content mode for events (binary headers or structured JSON).
        timeout_s: How long to wait for each PubAck.
        attempts: Total attempts per event for retryable failures.
        retry_wait_s: Pause between attempts (doubled each time).
    """

    def __init__(
        self,
        nc: Client,
        *,
        catalog: StreamCatalog,
        mode: Literal["binary", "structured"] = "binary",
        timeout_s: float = 5.0,
        attempts: int = 3,
        retry_wait_s: float = 0.2,
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=timeout_s)
        self.catalog = catalog
        self.mode: Literal["binary", "structured"] = mode
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.retry_wait_s = retry_wait_s

    def _prepare(self, event: CloudEvent, subject: str | None) -> tuple[str, str, dict[str, str], bytes]:
        subject = subject or subject_for(event.type)
        stream = self.catalog.stream_for(subject).name
        headers, payload = encode_nats(event, mode=self.mode)
        headers[MSG_ID_HEADER] = dedup_id(event)
        headers[EXPECTED_STREAM_HEADER] = stream
        return subject, stream, headers, payload

    @staticmethod
    def _result(event: CloudEvent, subject: str, ack: PubAck) -> PublishResult:
        return PublishResult(
            id=event.id,
            subject=subject,
            stream=ack.stream,
            seq=ack.seq,
            duplicate=bool(ack.duplicate),
        )

    async def publish(self, event: CloudEvent, *, subject: str | None = None) -> PublishResult:
        """Publish one event and wait for its PubAck.

        Raises:
            NoStreamForSubjectError: no stream captures the subject (nothing was sent).
            PublishTimeoutError: no PubAck after every attempt (a later retry deduplicates).
            PublishError: JetStream refused the message (e.g. too large, stream mismatch).
        """
        subject, _stream, headers, payload = self._prepare(event, subject)
        wait_s = self.retry_wait_s
        for attempt in range(1, self.attempts + 1):
            try:
                ack = await self._js.publish(subject, payload, timeout=self.timeout_s, headers=headers)
            except _RETRYABLE as exc:
                if attempt == self.attempts:
                    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
                        raise PublishError(
                            f"no JetStream stream answered for {subject} (streams not applied? "
                            "run `backbone streams apply`)",
                            subject=subject,
                            event_id=event.id,
                        ) from exc
                    raise PublishTimeoutError(
                        f"no PubAck for {subject} after {attempt} attempts: {exc!r}",
                        subject=subject,
                        event_id=event.id,
                    ) from exc
                log.warning("publish to %s failed (%r); retry %d", subject, exc, attempt)
                await asyncio.sleep(wait_s)
                wait_s *= 2
            except nats.js.errors.APIError as exc:
                raise PublishError(
                    f"JetStream refused {subject}: {exc.description or exc}",
                    subject=subject,
                    event_id=event.id,
                ) from exc
            else:
                return self._result(event, subject, ack)
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish_many(
        self, events: Sequence[CloudEvent], *, window: int = 512
    ) -> list[PublishResult | BackboneError]:
        """Publish events pipelined, at most ``window`` unacknowledged at a time.

        Order of storage follows the order of ``events`` (one connection, one writer), except for
        events whose first attempt failed and were retried after the others. Each entry of the result is the :class:`PublishResult` of the event at the
        same index, or the :class:`PublishError` that prevented it (after the same bounded
        retries as :meth:`publish`); nothing is reported stored that was not acknowledged.
        """
        results: list[PublishResult | BackboneError | None] = [None] * len(events)
        in_flight: dict[asyncio.Future[PubAck], tuple[int, str]] = {}
        retry: list[int] = []

        async def settle(done: set[asyncio.Future[PubAck]]) -> None:
            for future in done:
                index, subject = in_flight.pop(future)
                exc = future.exception()
                if exc is None:
                    results[index] = self._result(events[index], subject, future.result())
                elif isinstance(exc, nats.js.errors.APIError):
                    results[index] = PublishError(
                        f"JetStream refused {subject}: {exc.description or exc}",
                        subject=subject,
                        event_id=events[index].id,
                    )
                else:
                    retry.append(index)

        for index, event in enumerate(events):
            try:
                subject, _stream, headers, payload = self._prepare(event, None)
            except BackboneError as exc:  # an event that cannot be routed fails alone
                results[index] = exc
                continue
            while len(in_flight) >= window:
                done, _ = await asyncio.wait(
                    in_flight, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    self._expire(in_flight, retry)
                await settle(done)
            future = await self._js.publish_async(subject, payload, headers=headers)
            in_flight[future] = (index, subject)
        while in_flight:
            done, _ = await asyncio.wait(in_flight, timeout=self.timeout_s)
            if not done:
                self._expire(in_flight, retry)
            await settle(done)
        # Stragglers (timeouts, reconnects) go through the sequential path with its retries.
        for index in sorted(retry):
            try:
                results[index] = await self.publish(events[index])
            except BackboneError as exc:
                results[index] = exc
        return [r if r is not None else PublishError("not attempted") for r in results]

    @staticmethod
    def _expire(in_flight: dict[asyncio.Future[PubAck], tuple[int, str]], retry: list[int]) -> None:
        # No PubAck within the timeout: give those up here and retry them one by one afterwards.
        for future, (index, _subject) in list(in_flight.items()):
            future.cancel()
            retry.append(index)
            del in_flight[future]
