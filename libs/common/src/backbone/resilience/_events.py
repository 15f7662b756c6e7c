"""Typed events of the patterns: in-process listeners and an optional async sink.

Every pattern owns (or shares, via a registry) an :class:`EventHub`. Emitting never blocks and
never raises into the protected call: listener errors are logged and swallowed, and events for the
async sink (which the service connects to its CloudEvents publisher) go through a bounded queue
that drops, and counts, what it cannot hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "DEFAULT_SINK_EXCLUDED",
    "EVENT_TYPE_PREFIX",
    "EventHub",
    "EventListener",
    "EventSink",
    "ResilienceEvent",
    "event_type",
]

logger = logging.getLogger("backbone.resilience")

EVENT_TYPE_PREFIX = "system.resilience"
"""CloudEvent types are ``system.resilience.<kind>.<name>.<event>`` (stream SYSTEM_EVENTS)."""

DEFAULT_SINK_EXCLUDED = frozenset({"success", "error", "ignored_error"})
"""Per-call outcomes stay in-process: publishing every success would turn each protected call
into a publish. Transitions, rejections, retries and budget exhaustion do go to the sink."""

EventSink: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[None]]
"""``async def sink(cloud_event_type, data)``, e.g. a wrapper around the CloudEvents publisher."""

_UNSAFE_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def event_type(kind: str, name: str, event: str) -> str:
    """The CloudEvent type of an event; ``name`` becomes one subject token (``.`` -> ``_``)."""
    return f"{EVENT_TYPE_PREFIX}.{kind}.{_UNSAFE_TOKEN.sub('_', name)}.{event}"


@dataclass(frozen=True, slots=True)
class ResilienceEvent:
    """One event from a pattern instance.

    Attributes:
        kind: ``circuitbreaker``, ``retry``, ``bulkhead``, ``ratelimiter`` or ``timelimiter``.
        name: The instance's name.
        event: What happened (``state_transition``, ``call_not_permitted``, ``retry``, ...).
        data: Event details; always JSON-serialisable.
        timestamp_s: Wall-clock time (``time.time()``) of the event.
    """

    kind: str
    name: str
    event: str
    data: dict[str, Any]
    timestamp_s: float

    @property
    def type(self) -> str:
        """The CloudEvent type, ``system.resilience.<kind>.<name>.<event>``."""
        return event_type(self.kind, self.name, self.event)


EventListener: TypeAlias = Callable[[ResilienceEvent], None]


class EventHub:
    """Fans events out to listeners and, through a bounded queue, to an async sink.

    Args:
        max_queue: Events held for the sink before new ones are dropped (and counted in
            :attr:`dropped`).
        sink_excluded: Event names never sent to the sink (listeners still get them).

    Attributes:
        active: Whether anything listens; patterns skip building events when false, which keeps
            the hot path allocation-free.
        dropped: Events the sink never saw (queue full, or emitted without a running loop).
        sink_failures: Events whose sink call raised (logged, then dropped).
    """

    __slots__ = (
        "_listeners",
        "_loop",
        "_max_queue",
        "_queue",
        "_sink",
        "_sink_excluded",
        "_worker",
        "active",
        "dropped",
        "sink_failures",
    )

    def __init__(
        self,
        *,
        max_queue: int = 1000,
        sink_excluded: Collection[str] = DEFAULT_SINK_EXCLUDED,
    ) -> None:
        self._listeners: list[EventListener] = []
        self._sink: EventSink | None = None
        self._sink_excluded = frozenset(sink_excluded)
        self._max_queue = max_queue
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self.active = False
        self.dropped = 0
        self.sink_failures = 0

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` synchronously for every event (keep it quick)."""
        self._listeners.append(listener)
        self.active = True

    def remove_listener(self, listener: EventListener) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)
        self.active = bool(self._listeners) or self._sink is not None

    def attach_sink(self, sink: EventSink) -> None:
        """Send events (except per-call outcomes) to ``sink(type, data)`` from a background task."""
        self._sink = sink
        self.active = True

    def detach_sink(self) -> None:
        """Stop sending to the sink; queued events are discarded when the worker stops."""
        self._sink = None
        self.active = bool(self._listeners)
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._queue = None
        self._loop = None

    def emit(self, kind: str, name: str, event: str, data: dict[str, Any]) -> None:
        """Deliver an event; never raises, never blocks."""
        evt = ResilienceEvent(kind, name, event, data, time.time())
        for listener in self._listeners:
            try:
                listener(evt)
            except Exception:
                logger.exception("resilience event listener failed on %s", evt.type)
        if self._sink is not None and event not in self._sink_excluded:
            self._enqueue(evt)

    def _enqueue(self, evt: ResilienceEvent) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # A plain function called outside any loop: there is nowhere to run the sink.
            self.dropped += 1
            return
        if self._loop is not loop or self._queue is None:
            # First event, or the previous loop is gone (tests use one loop per test).
            self._loop = loop
            self._queue = asyncio.Queue(self._max_queue)
            self._worker = None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain(self._queue), name="resilience-event-sink")
        data = {"kind": evt.kind, "name": evt.name, "timestamp_s": evt.timestamp_s, **evt.data}
        try:
            self._queue.put_nowait((evt.type, data))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _drain(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        while True:
            type_, data = await queue.get()
            sink = self._sink
            if sink is None:
                return
            try:
                await sink(type_, data)
            except Exception:
                self.sink_failures += 1
                logger.warning("resilience event sink failed on %s; dropped", type_, exc_info=True)
            finally:
                queue.task_done()

    async def flush(self) -> None:
        """Wait until every queued event has been handed to the sink (tests, shutdown)."""
        queue = self._queue
        if queue is not None and self._loop is asyncio.get_running_loop():
            await queue.join()

    async def aclose(self) -> None:
        """Flush, then stop the background worker."""
        await self.flush()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
