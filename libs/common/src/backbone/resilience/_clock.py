"""Injectable time: the system clock for production, a fake one for tests.

Every pattern reads time through a :class:`Clock`, so windows, waits and timeouts can be driven
deterministically: :class:`FakeClock` never sleeps for real, its ``sleep`` advances time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Clock", "FakeClock", "SystemClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    """What :meth:`Clock.call_later` returns: something that can be cancelled."""

    def cancel(self) -> None:
        """Stop the callback from running (no-op when it already ran)."""


class Clock(Protocol):
    """The time source every pattern uses.

    ``monotonic`` is in seconds from an arbitrary origin. ``call_later`` must run the callback on
    the event loop thread (the running loop for :class:`SystemClock`).
    """

    def monotonic(self) -> float:
        """Seconds from an arbitrary, never decreasing origin."""
        ...

    async def sleep(self, delay_s: float) -> None:
        """Suspend the current task for ``delay_s`` seconds."""
        ...

    def sleep_sync(self, delay_s: float) -> None:
        """Block the current thread for ``delay_s`` seconds (plain-function callers)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once after ``delay_s`` seconds."""
        ...


class SystemClock:
    """Real time: :func:`time.monotonic`, :func:`asyncio.sleep` and the running loop's timers."""

    __slots__ = ()

    # Bound straight to the C function: one attribute lookup on the hot path, no extra frame.
    monotonic = staticmethod(time.monotonic)

    async def sleep(self, delay_s: float) -> None:
        """Sleep on the running event loop."""
        await asyncio.sleep(delay_s)

    def sleep_sync(self, delay_s: float) -> None:
        """Block the thread."""
        time.sleep(delay_s)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule on the running loop."""
        return asyncio.get_running_loop().call_later(delay_s, callback)

    def __repr__(self) -> str:
        return "SystemClock()"


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "due_s")

    def __init__(self, due_s: float, callback: Callable[[], None]) -> None:
        self.due_s = due_s
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that only moves when told to; for tests.

    Args:
        start_s: Initial reading of :meth:`monotonic`.
        auto_advance: When true (the default), :meth:`sleep` and :meth:`sleep_sync` advance the
            clock by the delay and return at once (after yielding to the loop), so code that waits
            runs instantly. When false, :meth:`sleep` blocks until a test calls :meth:`advance`
            past its deadline, which lets a test interleave several waiting tasks precisely.

    Timers from :meth:`call_later` fire, in due order, whenever time is advanced past them.
    """

    __slots__ = ("_counter", "_now_s", "_timers", "auto_advance", "slept_s")

    def __init__(self, start_s: float = 0.0, *, auto_advance: bool = True) -> None:
        self._now_s = start_s
        self.auto_advance = auto_advance
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._counter = itertools.count()
        self.slept_s: list[float] = []  # every sleep requested, for assertions on backoff

    def monotonic(self) -> float:
        """The fake reading."""
        return self._now_s

    def advance(self, delta_s: float) -> None:
        """Move time forward by ``delta_s`` and fire the timers that became due."""
        if delta_s < 0:
            msg = "time never goes backwards"
            raise ValueError(msg)
        target = self._now_s + delta_s
        while self._timers and self._timers[0][0] <= target:
            due, _, timer = heapq.heappop(self._timers)
            # Timers see the time they were due at, as a real loop would (roughly) show them.
            self._now_s = max(self._now_s, due)
            if not timer.cancelled:
                timer.callback()
        self._now_s = target

    async def run_for(self, delta_s: float, *, yields: int = 3) -> None:
        """Advance by ``delta_s`` one due timer at a time, letting woken tasks run at that time.

        :meth:`advance` fires every due timer at once and woken tasks only run afterwards, when
        the clock already shows the final time; this steps through the timers instead, so a
        task woken at ``t`` also observes ``t``.
        """
        target = self._now_s + delta_s
        while True:
            live = [entry for entry in self._timers if not entry[2].cancelled]
            due = min((entry[0] for entry in live), default=None)
            if due is None or due > target:
                break
            self.advance(max(due - self._now_s, 0.0))
            for _ in range(yields):
                await asyncio.sleep(0)
        self.advance(target - self._now_s)
        for _ in range(yields):
            await asyncio.sleep(0)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` at ``now + delay_s`` of fake time."""
        timer = _FakeTimer(self._now_s + max(delay_s, 0.0), callback)
        heapq.heappush(self._timers, (timer.due_s, next(self._counter), timer))
        return timer

    async def sleep(self, delay_s: float) -> None:
        """Advance (auto mode) or wait for :meth:`advance` (manual mode)."""
        self.slept_s.append(delay_s)
        if self.auto_advance:
            self.advance(max(delay_s, 0.0))
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(delay_s, wake)
        try:
            await future
        finally:
            timer.cancel()

    def sleep_sync(self, delay_s: float) -> None:
        """Advance the clock by ``delay_s`` (never blocks)."""
        self.slept_s.append(delay_s)
        self.advance(max(delay_s, 0.0))

    def __repr__(self) -> str:
        return f"FakeClock(now_s={self._now_s!r})"
