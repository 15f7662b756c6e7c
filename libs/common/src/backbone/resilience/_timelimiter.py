"""Time limiter: a deadline for a call, cancelling it when the deadline passes.

Like Resilience4j's TimeLimiter (default ``timeout_s`` 1 s, ``cancel_running`` true): a call still
running after ``timeout_s`` is cancelled and the caller gets :class:`TimeLimitExceededError`,
which is also a :class:`TimeoutError`. For coroutines the deadline works like
:func:`asyncio.timeout` (the awaiting task is cancelled, the cancellation is turned into the
error, and an outer cancellation is never swallowed) but runs on the injected clock, so tests
move time by hand. With ``cancel_running=False`` the call runs in its own task, which keeps going
in the background after the caller has been given the error.

Deviation: Python cannot interrupt a thread, so a plain function runs in a worker thread and is
abandoned, not stopped, when it overruns (its result is discarded); the thread's deadline is in
real time. Prefer coroutines for anything that must really stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from backbone.resilience._clock import Clock, SystemClock, TimerHandle
from backbone.resilience._decorate import CallDecorator
from backbone.resilience._errors import TimeLimitExceededError
from backbone.resilience._events import EventHub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

__all__ = ["TimeLimiter", "TimeLimiterConfig"]

P = ParamSpec("P")
R = TypeVar("R")

KIND = "timelimiter"


class TimeLimiterConfig(BaseModel):
    """Settings of a time limiter.

    Attributes:
        timeout_s: Deadline of one call.
        cancel_running: Cancel the call at the deadline (else leave it running in a task).
        max_threads: Worker threads for plain functions.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(default=1.0, gt=0)
    cancel_running: bool = True
    max_threads: int = Field(default=8, ge=1)


class _Deadline:
    """``async with limiter.deadline():`` - one deadline for the current task."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_limiter", "_task")

    def __init__(self, limiter: TimeLimiter) -> None:
        self._limiter = limiter
        self._fired = False
        self._cancelling = 0
        self._task: asyncio.Task[Any] | None = None
        self._handle: TimerHandle | None = None

    def _fire(self) -> None:
        self._fired = True
        if self._task is not None:
            self._task.cancel()

    async def __aenter__(self) -> Self:
        task = asyncio.current_task()
        if task is None:
            msg = "a time limiter needs to run inside an asyncio task"
            raise RuntimeError(msg)
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._limiter.clock.call_later(self._limiter.timeout_s, self._fire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        limiter = self._limiter
        if self._fired and exc_type is asyncio.CancelledError:
            task = cast("asyncio.Task[Any]", self._task)
            # Only our own cancellation becomes a timeout; an outer one propagates untouched.
            if task.uncancel() <= self._cancelling:
                limiter.on_timeout()
                raise TimeLimitExceededError(limiter.name, timeout_s=limiter.timeout_s) from exc
        if exc is None:
            limiter.successful_calls += 1
        elif isinstance(exc, Exception):
            limiter.failed_calls += 1


class TimeLimiter(CallDecorator):
    """A named time limiter (see the module docstring).

    Args:
        name: Identifies the limiter in events, metrics and remote control.
        config: Timeout and cancellation; defaults when omitted.
        clock: Time source of the deadline (coroutines only).
        events: Where events go; a private hub when omitted.

    Attributes:
        successful_calls, failed_calls, timed_out_calls: Cumulative counters.
    """

    __slots__ = (
        "_executor",
        "_executor_lock",
        "clock",
        "config",
        "events",
        "failed_calls",
        "name",
        "successful_calls",
        "timed_out_calls",
        "timeout_s",
    )

    def __init__(
        self,
        name: str,
        config: TimeLimiterConfig | None = None,
        *,
        clock: Clock | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.name = name
        self.config = config = config or TimeLimiterConfig()
        self.timeout_s = config.timeout_s
        self.clock: Clock = clock or SystemClock()
        self.events = events or EventHub()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self.successful_calls = 0
        self.failed_calls = 0
        self.timed_out_calls = 0

    def __repr__(self) -> str:
        return f"TimeLimiter({self.name!r}, timeout_s={self.timeout_s})"

    def on_timeout(self) -> None:
        """Count a timeout and emit its event."""
        self.timed_out_calls += 1
        if self.events.active:
            self.events.emit(KIND, self.name, "timeout", {"timeout_s": self.timeout_s})

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "kind": KIND,
            "name": self.name,
            "timeout_s": self.timeout_s,
            "successful_calls": self.successful_calls,
            "failed_calls": self.failed_calls,
            "timed_out_calls": self.timed_out_calls,
        }

    def reset(self) -> None:
        """Nothing to forget (counters stay monotonic); present for a uniform remote control."""

    def deadline(self) -> _Deadline:
        """An async context manager bounding the block by ``timeout_s``."""
        return _Deadline(self)

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` within the deadline."""
        if not self.config.cancel_running:
            return await self._call_detached(fn(*args, **kwargs))
        async with _Deadline(self):
            return await fn(*args, **kwargs)

    async def _call_detached(self, awaitable: Awaitable[R]) -> R:
        task = asyncio.ensure_future(awaitable)
        expired = asyncio.get_running_loop().create_future()

        def fire() -> None:
            if not expired.done():
                expired.set_result(None)

        handle = self.clock.call_later(self.timeout_s, fire)
        try:
            await asyncio.wait({task, expired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            handle.cancel()
            expired.cancel()
        if not task.done():
            self.on_timeout()
            raise TimeLimitExceededError(self.name, timeout_s=self.timeout_s)
        try:
            result = task.result()
        except Exception:
            self.failed_calls += 1
            raise
        self.successful_calls += 1
        return result

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.config.max_threads,
                    thread_name_prefix=f"timelimiter-{self.name}",
                )
            return self._executor

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the plain function in a worker thread and wait at most ``timeout_s`` (real time)."""
        future = self._pool().submit(fn, *args, **kwargs)
        try:
            result = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # only effective when it has not started yet
            self.on_timeout()
            raise TimeLimitExceededError(self.name, timeout_s=self.timeout_s) from None
        except Exception:
            self.failed_calls += 1
            raise
        self.successful_calls += 1
        return result

    def close(self) -> None:
        """Stop the worker threads (after the running calls end)."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
