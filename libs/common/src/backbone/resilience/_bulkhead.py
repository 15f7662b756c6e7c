"""Bulkhead: a bound on concurrent calls, with an optional adaptive limit.

Like Resilience4j's semaphore bulkhead: at most ``max_concurrent`` calls run at once; a caller
that finds no free slot waits up to ``max_wait_s`` (default 0: rejected at once) and then gets
:class:`BulkheadFullError`. Waiters are served first come, first served, and a freed slot is handed
straight to the oldest waiter, so late arrivals cannot overtake.

The adaptive limit is the "adaptive concurrency" extension (after Netflix's concurrency-limits):

* ``aimd``: a call that fails with a timeout, or takes longer than ``latency_threshold_s``,
  multiplies the limit by ``aimd_backoff_ratio``; a good call while at least half the limit is
  in use adds 1.
* ``gradient``: the limit follows the ratio between the long-term latency (an exponential
  average) and each call's latency, ``limit x min(1, tolerance x long / sample) + sqrt(limit)``,
  smoothed; it grows only while the limit is actually used.

Both stay within ``[min_concurrent, adaptive_max_concurrent]`` and start at ``max_concurrent``.

Deviations from Resilience4j: there is no thread-pool bulkhead (use the time limiter's worker
thread for plain functions); events are only ``call_rejected`` and ``limit_changed`` (no per-call
permitted/finished events, which would cost every call an allocation). One bulkhead serves either
one event loop or threads (plain functions); mixing both on one instance works but a slot freed
by a thread reaches an async waiter through ``call_soon_threadsafe``.

Concurrency model: the async path runs on one event loop and takes no lock (the loop serialises
it); the plain-function path takes a lock and waits on a condition. Use one instance either from
a loop or from threads - for both at once, create two bulkheads.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from backbone.resilience._clock import Clock, SystemClock
from backbone.resilience._decorate import CallDecorator
from backbone.resilience._errors import BulkheadFullError
from backbone.resilience._events import EventHub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from types import TracebackType

__all__ = ["Bulkhead", "BulkheadConfig"]

P = ParamSpec("P")
R = TypeVar("R")

KIND = "bulkhead"


class BulkheadConfig(BaseModel):
    """Settings of a bulkhead.

    Attributes:
        max_concurrent: Concurrent calls allowed (the starting limit when adaptive).
        max_wait_s: How long a caller may wait for a slot; 0 rejects at once.
        adaptive: ``none``, ``aimd`` or ``gradient``.
        min_concurrent: Lower bound of the adaptive limit.
        adaptive_max_concurrent: Upper bound of the adaptive limit.
        latency_threshold_s: AIMD: a call slower than this counts as a drop.
        aimd_backoff_ratio: AIMD: multiplier applied on a drop.
        gradient_tolerance: Gradient: how much latency growth is tolerated before shrinking.
        gradient_smoothing: Gradient: weight of each new estimate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent: int = Field(default=25, ge=1)
    max_wait_s: float = Field(default=0.0, ge=0)
    adaptive: Literal["none", "aimd", "gradient"] = "none"
    min_concurrent: int = Field(default=1, ge=1)
    adaptive_max_concurrent: int = Field(default=1000, ge=1)
    latency_threshold_s: float = Field(default=1.0, gt=0)
    aimd_backoff_ratio: float = Field(default=0.9, gt=0, lt=1)
    gradient_tolerance: float = Field(default=1.5, ge=1)
    gradient_smoothing: float = Field(default=0.2, gt=0, le=1)


class _Slot:
    """One admitted block used as a context manager; measures latency for the adaptive limit."""

    __slots__ = ("_bulkhead", "_start_s")

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead
        self._start_s = 0.0

    async def __aenter__(self) -> Self:
        await self._bulkhead.acquire()
        self._start_s = self._bulkhead.clock.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bulkhead = self._bulkhead
        bulkhead.release(bulkhead.clock.monotonic() - self._start_s, exc)

    def __enter__(self) -> Self:
        self._bulkhead.acquire_sync()
        self._start_s = self._bulkhead.clock.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bulkhead = self._bulkhead
        bulkhead.release_sync(bulkhead.clock.monotonic() - self._start_s, exc)


class Bulkhead(CallDecorator):
    """A named bulkhead (see the module docstring).

    Args:
        name: Identifies the bulkhead in events, metrics and remote control.
        config: Limit, wait and adaptivity; defaults when omitted.
        clock: Time source for the wait and the latency samples.
        events: Where events go; a private hub when omitted.

    Attributes:
        permitted_calls, rejected_calls, finished_calls: Cumulative counters.
        max_inflight_seen: The highest concurrency observed (a check for tests and operators).
    """

    __slots__ = (
        "_cond",
        "_inflight",
        "_limit",
        "_limit_f",
        "_lock",
        "_long_latency_s",
        "_sync_waiting",
        "_waiters",
        "clock",
        "config",
        "events",
        "finished_calls",
        "max_inflight_seen",
        "name",
        "permitted_calls",
        "rejected_calls",
    )

    def __init__(
        self,
        name: str,
        config: BulkheadConfig | None = None,
        *,
        clock: Clock | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.name = name
        self.config = config = config or BulkheadConfig()
        self.clock: Clock = clock or SystemClock()
        self.events = events or EventHub()
        # Re-entrant: an event listener may inspect the bulkhead while it emits under the lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._inflight = 0
        self._limit = config.max_concurrent
        self._limit_f = float(config.max_concurrent)
        self._long_latency_s = 0.0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._sync_waiting = 0
        self.permitted_calls = 0
        self.rejected_calls = 0
        self.finished_calls = 0
        self.max_inflight_seen = 0

    def __repr__(self) -> str:
        return f"Bulkhead({self.name!r}, limit={self._limit}, inflight={self._inflight})"

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._limit

    @property
    def inflight(self) -> int:
        """Calls running now."""
        return self._inflight

    @property
    def available(self) -> int:
        """Free slots now."""
        return max(self._limit - self._inflight, 0)

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "kind": KIND,
            "name": self.name,
            "max_concurrent": self._limit,
            "inflight": self._inflight,
            "available": self.available,
            "waiting": len(self._waiters) + self._sync_waiting,
            "permitted_calls": self.permitted_calls,
            "rejected_calls": self.rejected_calls,
            "finished_calls": self.finished_calls,
            "max_inflight_seen": self.max_inflight_seen,
        }

    def reset(self) -> None:
        """Restore the configured limit (adaptive history is dropped)."""
        self._set_limit(float(self.config.max_concurrent))
        self._long_latency_s = 0.0
        self._wake()

    # ------------------------------------------------------------------ admission

    def _take(self) -> bool:
        """Take a slot if one is free and nobody is queued."""
        if self._inflight < self._limit and not self._waiters and not self._sync_waiting:
            self._inflight += 1
            self.permitted_calls += 1
            self.max_inflight_seen = max(self.max_inflight_seen, self._inflight)
            return True
        return False

    def _reject(self) -> BulkheadFullError:
        self.rejected_calls += 1
        if self.events.active:
            self.events.emit(
                KIND,
                self.name,
                "call_rejected",
                {"max_concurrent": self._limit, "inflight": self._inflight},
            )
        return BulkheadFullError(self.name, max_concurrent=self._limit)

    async def acquire(self) -> None:
        """Take a slot, waiting up to ``max_wait_s``; raise :class:`BulkheadFullError` otherwise.

        Every successful acquire must be paired with one :meth:`release`.
        """
        if self._take():
            return
        await self._wait_for_slot()

    async def _wait_for_slot(self) -> None:
        if self.config.max_wait_s <= 0:
            raise self._reject()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def expire() -> None:
            if not future.done():
                future.set_result(False)

        self._waiters.append(future)
        timer = self.clock.call_later(self.config.max_wait_s, expire)
        try:
            admitted = await future
        except asyncio.CancelledError:
            # The slot may have been handed over just before the cancellation landed.
            if future.done() and not future.cancelled() and future.result():
                self.release(0.0, None, sample=False)
            raise
        finally:
            timer.cancel()
        if not admitted:
            if future in self._waiters:
                self._waiters.remove(future)
            raise self._reject()

    def acquire_sync(self) -> None:
        """Blocking variant for plain functions (waits on a condition, in real time)."""
        with self._cond:
            if self._take():
                return
            if self.config.max_wait_s <= 0:
                raise self._reject()
            self._sync_waiting += 1
            try:
                got = self._cond.wait_for(
                    lambda: self._inflight < self._limit, timeout=self.config.max_wait_s
                )
                if got:
                    self._inflight += 1
                    self.permitted_calls += 1
                    self.max_inflight_seen = max(self.max_inflight_seen, self._inflight)
                    return
            finally:
                self._sync_waiting -= 1
            raise self._reject()

    def release(
        self, latency_s: float, error: BaseException | None, *, sample: bool = True
    ) -> None:
        """Free a slot; ``latency_s`` and ``error`` feed the adaptive limit."""
        self._inflight -= 1
        self.finished_calls += 1
        if sample and self.config.adaptive != "none":
            self._adapt(latency_s, error, self._inflight + 1)
        if self._waiters or self._sync_waiting:
            self._wake()

    def release_sync(self, latency_s: float, error: BaseException | None) -> None:
        """:meth:`release` for the plain-function path (under the lock)."""
        with self._lock:
            self.release(latency_s, error)

    def _wake(self) -> None:
        if self._sync_waiting:
            with self._cond:
                self._cond.notify()
        waiters = self._waiters
        if waiters:
            while waiters and self._inflight < self._limit:
                future = waiters[0]
                if future.done():  # timed out or cancelled
                    waiters.popleft()
                    continue
                loop = future.get_loop()
                if not _on_loop_thread(loop):
                    loop.call_soon_threadsafe(self._wake)
                    return
                waiters.popleft()
                self._inflight += 1
                self.permitted_calls += 1
                self.max_inflight_seen = max(self.max_inflight_seen, self._inflight)
                future.set_result(True)

    # ------------------------------------------------------------------ adaptive limit

    def _adapt(self, latency_s: float, error: BaseException | None, inflight: int) -> None:
        config = self.config
        limit = self._limit_f
        if config.adaptive == "aimd":
            dropped = isinstance(error, TimeoutError) or latency_s > config.latency_threshold_s
            if dropped:
                limit *= config.aimd_backoff_ratio
            elif inflight * 2 >= limit:
                limit += 1.0
        else:
            if error is not None and not isinstance(error, TimeoutError):
                return  # a fast failure says nothing about queueing
            if latency_s <= 0:
                return
            long_s = self._long_latency_s
            long_s = latency_s if long_s == 0 else long_s * 0.95 + latency_s * 0.05
            self._long_latency_s = long_s
            gradient = max(0.5, min(1.0, config.gradient_tolerance * long_s / latency_s))
            estimate = limit * gradient + math.sqrt(limit)
            if estimate > limit and inflight * 2 < limit:
                return  # application-limited: do not grow a limit nobody uses
            limit = limit * (1 - config.gradient_smoothing) + estimate * config.gradient_smoothing
        self._set_limit(limit)

    def _set_limit(self, limit: float) -> None:
        config = self.config
        limit = min(max(limit, float(config.min_concurrent)), float(config.adaptive_max_concurrent))
        self._limit_f = limit
        new = int(limit)
        if new != self._limit:
            old, self._limit = self._limit, new
            if self.events.active:
                self.events.emit(
                    KIND, self.name, "limit_changed", {"from_limit": old, "to_limit": new}
                )

    # ------------------------------------------------------------------ call styles

    def guard(self) -> _Slot:
        """A context manager (``async with`` or ``with``) holding one slot for a block."""
        return _Slot(self)

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` inside a slot."""
        await self.acquire()
        monotonic = self.clock.monotonic
        start = monotonic()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.release(monotonic() - start, exc)
            raise
        self.release(monotonic() - start, None)
        return result

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function ``fn(*args, **kwargs)`` inside a slot."""
        self.acquire_sync()
        monotonic = self.clock.monotonic
        start = monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.release_sync(monotonic() - start, exc)
            raise
        self.release_sync(monotonic() - start, None)
        return result

    def _decorate_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if self.config.adaptive != "none":
            return super()._decorate_async(fn)

        # Without an adaptive limit no latency is needed: the hot path is a counter and a check.
        take = self._take
        wait_for_slot = self._wait_for_slot
        release = self.release

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not take():
                await wait_for_slot()
            try:
                return await fn(*args, **kwargs)
            finally:
                release(0.0, None, sample=False)

        return wrapper


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
