"""Circuit breaker with Resilience4j's semantics.

The breaker is a state machine over six states. In CLOSED it records the outcome of every call in a
sliding window (the last N calls, or the calls of the last N seconds); after each recorded call, if
the window holds at least ``minimum_calls`` calls and the failure rate (or the slow-call rate) is
``>=`` its threshold, it goes OPEN. OPEN rejects calls with :class:`CircuitOpenError` until the wait
has elapsed, then lets up to ``permitted_calls_in_half_open`` trial calls through (HALF_OPEN); once
enough trials are recorded it closes if both rates are below their thresholds, else it reopens
(with a longer wait when ``wait_in_open_multiplier > 1``). DISABLED always permits and records
nothing; FORCED_OPEN always rejects; METRICS_ONLY records and emits ``failure_rate_exceeded`` /
``slow_call_rate_exceeded`` events but never opens. Only an operator (or the remote control) moves
the breaker in and out of the three special states.

Classification of an outcome, as in Resilience4j: an exception matching ``ignore_exceptions`` (or
the ``ignore_exception`` predicate) is not recorded and gives its half-open permit back; one
matching ``record_exceptions`` (default: every :class:`Exception`) is a failure; any other
exception counts as a success. A returned value is a failure when ``record_result(value)`` is true.
A call is slow when its duration is strictly greater than ``slow_call_duration_s``.

Deviations from Resilience4j (on purpose):

* OPEN moves to HALF_OPEN once ``now >= open_until`` (Resilience4j: strictly after), so a wait of
  60 s means "the 60th second lets a trial through".
* Rates are compared with exact arithmetic (``failed * 100 >= threshold * total``) instead of
  32-bit floats.
* :class:`BaseException` that is not an :class:`Exception` (``asyncio.CancelledError``,
  ``KeyboardInterrupt``) is treated like an ignored exception: a cancelled call says nothing about
  the dependency's health.
* ``automatic_transition_to_half_open`` and ``max_wait_in_half_open_s`` use the injected clock's
  timers when an event loop is running, and are also applied lazily whenever the breaker is
  used or its state is read (no scheduler thread).
* The time-based window uses one-second buckets of the injected monotonic clock, like
  Resilience4j's epoch-second buckets.
"""

from __future__ import annotations

import abc
import functools
import threading
from collections import deque
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from backbone.resilience._clock import Clock, SystemClock, TimerHandle
from backbone.resilience._config import ExceptionTypes  # noqa: TC001 - pydantic needs it at runtime
from backbone.resilience._decorate import CallDecorator
from backbone.resilience._errors import CircuitOpenError
from backbone.resilience._events import EventHub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from types import TracebackType

__all__ = ["CircuitBreaker", "CircuitBreakerConfig", "CircuitState"]

P = ParamSpec("P")
R = TypeVar("R")

KIND = "circuitbreaker"


class CircuitState(StrEnum):
    """The six states of a breaker (Resilience4j's names)."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    DISABLED = "DISABLED"
    FORCED_OPEN = "FORCED_OPEN"
    METRICS_ONLY = "METRICS_ONLY"


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_DISABLED = CircuitState.DISABLED
_FORCED_OPEN = CircuitState.FORCED_OPEN
_METRICS_ONLY = CircuitState.METRICS_ONLY

# Outcome flags stored in the windows.
_FAILED = 1
_SLOW = 2

# Verdicts of a threshold check.
_BELOW_MINIMUM = -1
_BELOW = 0
_FAILURE_EXCEEDED = 1
_SLOW_EXCEEDED = 2


class CircuitBreakerConfig(BaseModel):
    """Settings of a circuit breaker; defaults are Resilience4j's.

    Attributes:
        sliding_window_type: ``count_based`` (the last N calls) or ``time_based`` (the calls of
            the last N seconds).
        sliding_window_size: N, in calls or seconds.
        minimum_calls: Calls the window must hold before rates are evaluated (for a count-based
            window, capped at the window size as in Resilience4j).
        failure_rate_threshold: Percentage; the breaker opens when the rate is ``>=`` it.
        slow_call_rate_threshold: Percentage of slow calls that opens the breaker (``>=``).
        slow_call_duration_s: Calls strictly longer than this are slow.
        permitted_calls_in_half_open: Trial calls let through in HALF_OPEN (and the size of the
            half-open window; the verdict comes after ``min(minimum_calls, this)`` calls).
        max_wait_in_half_open_s: After this long in HALF_OPEN the breaker reopens; 0 waits for the
            trials however long they take.
        wait_in_open_s: How long OPEN rejects calls before allowing trials.
        wait_in_open_multiplier: 1 for a fixed wait; above 1 the wait grows exponentially with
            each consecutive reopening (``wait_in_open_s * multiplier ** (attempt - 1)``).
        wait_in_open_max_s: Upper bound of the exponential wait.
        automatic_transition_to_half_open: Move to HALF_OPEN when the wait ends even without a call.
        record_exceptions: Exceptions that count as failures; empty means every ``Exception``.
        ignore_exceptions: Exceptions that are not recorded at all (take precedence).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sliding_window_type: Literal["count_based", "time_based"] = "count_based"
    sliding_window_size: int = Field(default=100, ge=1)
    minimum_calls: int = Field(default=100, ge=1)
    failure_rate_threshold: float = Field(default=50.0, gt=0, le=100)
    slow_call_rate_threshold: float = Field(default=100.0, gt=0, le=100)
    slow_call_duration_s: float = Field(default=60.0, gt=0)
    permitted_calls_in_half_open: int = Field(default=10, ge=1)
    max_wait_in_half_open_s: float = Field(default=0.0, ge=0)
    wait_in_open_s: float = Field(default=60.0, ge=0)
    wait_in_open_multiplier: float = Field(default=1.0, ge=1)
    wait_in_open_max_s: float | None = Field(default=None, gt=0)
    automatic_transition_to_half_open: bool = False
    record_exceptions: ExceptionTypes = ()
    ignore_exceptions: ExceptionTypes = ()

    def wait_in_open_for(self, attempt: int) -> float:
        """The OPEN wait for the ``attempt``-th consecutive opening (1-based)."""
        wait_s = self.wait_in_open_s * self.wait_in_open_multiplier ** max(attempt - 1, 0)
        if self.wait_in_open_max_s is not None:
            wait_s = min(wait_s, self.wait_in_open_max_s)
        return wait_s


class _Window(abc.ABC):
    """Aggregates outcomes; subclasses decide which calls are still inside."""

    __slots__ = ("failed", "full", "minimum_calls", "slow", "timed", "total")

    def __init__(self, minimum_calls: int) -> None:
        self.minimum_calls = minimum_calls
        self.total = 0
        self.failed = 0
        self.slow = 0
        # A full count-based window: a fast success can only lower the rates (hot path).
        self.full = False
        # Whether record() needs the time (only the time-based window).
        self.timed = False

    @abc.abstractmethod
    def record(self, outcome: int, now_s: float) -> None:
        """Count one outcome."""

    def refresh(self, now_s: float) -> None:  # noqa: B027 - a no-op unless time-based
        """Drop what fell out of the window (time-based only)."""


class _CountWindow(_Window):
    """The last ``size`` outcomes in a ring buffer, with running totals."""

    __slots__ = ("_head", "_ring", "_size")

    def __init__(self, size: int, minimum_calls: int) -> None:
        super().__init__(min(minimum_calls, size))
        self._size = size
        self._ring: list[int] = []
        self._head = 0

    def record(self, outcome: int, now_s: float) -> None:  # noqa: ARG002 - same shape as time window
        ring = self._ring
        if len(ring) < self._size:
            ring.append(outcome)
            self.total += 1
            self.full = len(ring) == self._size
        else:
            head = self._head
            old = ring[head]
            ring[head] = outcome
            self._head = (head + 1) % self._size
            if old & _FAILED:
                self.failed -= 1
            if old & _SLOW:
                self.slow -= 1
        if outcome & _FAILED:
            self.failed += 1
        if outcome & _SLOW:
            self.slow += 1


class _TimeWindow(_Window):
    """Outcomes of the last ``size_s`` whole seconds, in one bucket per second."""

    __slots__ = ("_buckets", "_size_s")

    def __init__(self, size_s: int, minimum_calls: int) -> None:
        super().__init__(minimum_calls)
        self.timed = True
        self._size_s = size_s
        # Each bucket holds: second, total, failed, slow.
        self._buckets: deque[list[int]] = deque()

    def refresh(self, now_s: float) -> None:
        oldest_kept = int(now_s // 1) - self._size_s + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest_kept:
            _, total, failed, slow = buckets.popleft()
            self.total -= total
            self.failed -= failed
            self.slow -= slow

    def record(self, outcome: int, now_s: float) -> None:
        self.refresh(now_s)
        second = int(now_s // 1)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            bucket = buckets[-1]
        else:
            bucket = [second, 0, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        self.total += 1
        if outcome & _FAILED:
            bucket[2] += 1
            self.failed += 1
        if outcome & _SLOW:
            bucket[3] += 1
            self.slow += 1


class _Guard:
    """One protected call used as a (sync or async) context manager."""

    __slots__ = ("_breaker", "_start_s")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._start_s = 0.0

    def __enter__(self) -> Self:
        self._breaker.acquire()
        self._start_s = self._breaker.clock.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        breaker = self._breaker
        duration_s = breaker.clock.monotonic() - self._start_s
        if exc is None:
            breaker.on_success(duration_s)
        else:
            breaker.on_exception(duration_s, exc)

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class CircuitBreaker(CallDecorator):
    """A named circuit breaker (see the module docstring for the semantics).

    Use it as a decorator (``@breaker`` on a coroutine function or a plain function), with
    :meth:`call` / :meth:`call_sync`, or as a context manager via :meth:`guard`::

        breaker = CircuitBreaker("github", CircuitBreakerConfig(minimum_calls=10))

        @breaker
        async def fetch() -> bytes: ...

        async with breaker.guard():
            ...

    Args:
        name: Identifies the breaker in events, metrics and remote control.
        config: Thresholds and windows; Resilience4j's defaults when omitted.
        record_exception: Extra predicate: exceptions for which it is true are failures.
        ignore_exception: Extra predicate: exceptions for which it is true are ignored.
        record_result: Results for which it is true count as failures (e.g. HTTP 503 responses).
        clock: Time source (inject a :class:`~backbone.resilience.FakeClock` in tests).
        events: Where events go; a private hub when omitted.

    Attributes:
        successful_calls, failed_calls, slow_calls, not_permitted_calls, ignored_calls:
            Cumulative counters since creation (exported by the metrics collector).
    """

    __slots__ = (
        "_attempts",
        "_failure_exceeded_sent",
        "_half_open_deadline_s",
        "_ignore_exception",
        "_ignore_types",
        "_lock",
        "_open_until_s",
        "_permits",
        "_record_exception",
        "_record_result",
        "_record_types",
        "_slow_call_duration_s",
        "_slow_exceeded_sent",
        "_state",
        "_thresholds",
        "_timer",
        "_window",
        "clock",
        "config",
        "events",
        "failed_calls",
        "ignored_calls",
        "name",
        "not_permitted_calls",
        "slow_calls",
        "successful_calls",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        record_exception: Callable[[BaseException], bool] | None = None,
        ignore_exception: Callable[[BaseException], bool] | None = None,
        record_result: Callable[[Any], bool] | None = None,
        clock: Clock | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.name = name
        self.config = config = config or CircuitBreakerConfig()
        self.clock: Clock = clock or SystemClock()
        self.events = events or EventHub()
        self._record_exception = record_exception
        self._ignore_exception = ignore_exception
        self._record_result = record_result
        self._record_types: tuple[type[BaseException], ...] = config.record_exceptions or (
            Exception,
        )
        self._ignore_types = config.ignore_exceptions
        self._slow_call_duration_s = config.slow_call_duration_s
        self._thresholds = (config.failure_rate_threshold, config.slow_call_rate_threshold)
        self._lock = threading.RLock()
        self._state = _CLOSED
        self._window: _Window = self._closed_window()
        self._permits = 0
        self._attempts = 0
        self._open_until_s = 0.0
        self._half_open_deadline_s = 0.0
        self._timer: TimerHandle | None = None
        self._failure_exceeded_sent = False
        self._slow_exceeded_sent = False
        self.successful_calls = 0
        self.failed_calls = 0
        self.slow_calls = 0
        self.not_permitted_calls = 0
        self.ignored_calls = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    # ------------------------------------------------------------------ state and metrics

    @property
    def state(self) -> CircuitState:
        """The current state (applies a due automatic transition first)."""
        if self._state is _OPEN or self._state is _HALF_OPEN:
            with self._lock:
                self._apply_due_transitions(self.clock.monotonic())
        return self._state

    @property
    def remaining_wait_s(self) -> float:
        """Seconds until OPEN allows trial calls (0 outside OPEN, ``inf`` in FORCED_OPEN)."""
        state = self.state
        if state is _OPEN:
            return max(self._open_until_s - self.clock.monotonic(), 0.0)
        if state is _FORCED_OPEN:
            return float("inf")
        return 0.0

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready snapshot: state, window rates and cumulative counters."""
        with self._lock:
            state = self.state
            window = self._window
            window.refresh(self.clock.monotonic())
            total = window.total
            enough = total > 0 and total >= window.minimum_calls
            return {
                "kind": KIND,
                "name": self.name,
                "state": state.value,
                "failure_rate": window.failed * 100.0 / total if enough else -1.0,
                "slow_call_rate": window.slow * 100.0 / total if enough else -1.0,
                "buffered_calls": total,
                "failed_buffered_calls": window.failed,
                "slow_buffered_calls": window.slow,
                "remaining_wait_s": self.remaining_wait_s,
                "successful_calls": self.successful_calls,
                "failed_calls": self.failed_calls,
                "slow_calls": self.slow_calls,
                "not_permitted_calls": self.not_permitted_calls,
                "ignored_calls": self.ignored_calls,
            }

    # ------------------------------------------------------------------ permission

    def acquire(self) -> None:
        """Ask for permission to call; raise :class:`CircuitOpenError` when refused.

        Each permitted call must be followed by exactly one of :meth:`on_success`,
        :meth:`on_exception`, :meth:`on_result` or :meth:`release`.
        """
        if self._state is not _CLOSED:
            self._acquire_slow()

    def try_acquire(self) -> bool:
        """Like :meth:`acquire` but return False instead of raising."""
        try:
            self.acquire()
        except CircuitOpenError:
            return False
        return True

    def _acquire_slow(self) -> None:
        with self._lock:
            now = self.clock.monotonic()
            self._apply_due_transitions(now)
            state = self._state
            if state is _OPEN and now >= self._open_until_s:
                self._transition(_HALF_OPEN, now)
                state = _HALF_OPEN
            if state is _HALF_OPEN:
                if self._permits > 0:
                    self._permits -= 1
                    return
                remaining_s = 0.0
            elif state is _OPEN:
                remaining_s = self._open_until_s - now
            elif state is _FORCED_OPEN:
                remaining_s = float("inf")
            else:  # CLOSED (raced), DISABLED, METRICS_ONLY
                return
            self.not_permitted_calls += 1
            if self.events.active:
                self.events.emit(KIND, self.name, "call_not_permitted", {"state": state.value})
            raise CircuitOpenError(self.name, state=state.value, remaining_wait_s=remaining_s)

    def release(self) -> None:
        """Give a permit back without recording an outcome (the call did not happen)."""
        if self._state is _HALF_OPEN:
            with self._lock:
                if (
                    self._state is _HALF_OPEN
                    and self._permits < self.config.permitted_calls_in_half_open
                ):
                    self._permits += 1

    # ------------------------------------------------------------------ outcomes

    def on_success(self, duration_s: float) -> None:
        """Record a successful call that took ``duration_s``."""
        self.successful_calls += 1
        if self.events.active:
            self.events.emit(KIND, self.name, "success", {"duration_s": duration_s})
        if duration_s > self._slow_call_duration_s:
            self.slow_calls += 1
            self._record(_SLOW)
        else:
            self._record(0)

    def on_result(self, duration_s: float, result: object) -> None:
        """Record a returned value: a failure when ``record_result(result)`` is true."""
        if self._record_result is not None and self._record_result(result):
            self._on_failure(duration_s, f"result recorded as failure: {result!r:.200}")
        else:
            self.on_success(duration_s)

    def on_exception(self, duration_s: float, exc: BaseException) -> None:
        """Record an exception: ignored, failure or success (see the module docstring)."""
        if (
            not isinstance(exc, Exception)
            or isinstance(exc, self._ignore_types)
            or (self._ignore_exception is not None and self._ignore_exception(exc))
        ):
            self.ignored_calls += 1
            if self.events.active:
                self.events.emit(
                    KIND,
                    self.name,
                    "ignored_error",
                    {"duration_s": duration_s, "error": type(exc).__name__},
                )
            self.release()
            return
        if isinstance(exc, self._record_types) or (
            self._record_exception is not None and self._record_exception(exc)
        ):
            self._on_failure(duration_s, f"{type(exc).__name__}: {exc}")
        else:
            self.on_success(duration_s)

    def _on_failure(self, duration_s: float, error: str) -> None:
        self.failed_calls += 1
        if self.events.active:
            self.events.emit(
                KIND, self.name, "error", {"duration_s": duration_s, "error": error[:500]}
            )
        if duration_s > self._slow_call_duration_s:
            self.slow_calls += 1
            self._record(_FAILED | _SLOW)
        else:
            self._record(_FAILED)

    def _record(self, outcome: int) -> None:  # noqa: C901 - one flat decision table
        with self._lock:
            state = self._state
            window = self._window
            if not outcome and state is _CLOSED and window.full:
                # Replacing the oldest call of a full window by a fast success cannot raise
                # either rate, and the last check found them below the thresholds.
                window.record(0, 0.0)
                return
            if state is _DISABLED or state is _FORCED_OPEN:
                return
            now = self.clock.monotonic() if window.timed else 0.0
            window.record(outcome, now)
            if state is _OPEN:
                # A call permitted before the breaker opened still counts (Resilience4j).
                return
            total = window.total
            if total < window.minimum_calls:
                return
            failure_threshold, slow_threshold = self._thresholds
            verdict = _BELOW
            if window.failed * 100.0 >= failure_threshold * total:
                verdict |= _FAILURE_EXCEEDED
            if window.slow * 100.0 >= slow_threshold * total:
                verdict |= _SLOW_EXCEEDED
            if state is _CLOSED:
                if verdict:
                    self._emit_exceeded(verdict, window)
                    self._transition(_OPEN, self.clock.monotonic())
            elif state is _HALF_OPEN:
                self._transition(_OPEN if verdict else _CLOSED, self.clock.monotonic())
            elif state is _METRICS_ONLY and verdict:
                self._emit_exceeded(verdict, window, once=True)

    def _emit_exceeded(self, verdict: int, window: _Window, *, once: bool = False) -> None:
        if not self.events.active:
            return
        if verdict & _FAILURE_EXCEEDED and not (once and self._failure_exceeded_sent):
            self._failure_exceeded_sent = once
            rate = window.failed * 100.0 / window.total
            self.events.emit(KIND, self.name, "failure_rate_exceeded", {"failure_rate": rate})
        if verdict & _SLOW_EXCEEDED and not (once and self._slow_exceeded_sent):
            self._slow_exceeded_sent = once
            rate = window.slow * 100.0 / window.total
            self.events.emit(KIND, self.name, "slow_call_rate_exceeded", {"slow_call_rate": rate})

    # ------------------------------------------------------------------ transitions

    def _closed_window(self) -> _Window:
        config = self.config
        if config.sliding_window_type == "count_based":
            return _CountWindow(config.sliding_window_size, config.minimum_calls)
        return _TimeWindow(config.sliding_window_size, config.minimum_calls)

    def _apply_due_transitions(self, now: float) -> None:
        config = self.config
        if (
            self._state is _OPEN
            and config.automatic_transition_to_half_open
            and now >= self._open_until_s
        ):
            self._transition(_HALF_OPEN, now)
        if (
            self._state is _HALF_OPEN
            and config.max_wait_in_half_open_s > 0
            and now >= self._half_open_deadline_s
        ):
            self._transition(_OPEN, now)

    def _transition(self, target: CircuitState, now: float) -> None:
        """Enter ``target`` (re-entering the same state re-initialises it, silently)."""
        previous = self._state
        config = self.config
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if target is _OPEN:
            self._attempts += 1
            wait_s = config.wait_in_open_for(self._attempts)
            self._open_until_s = now + wait_s
            # The window is kept: metrics keep showing the rates that opened the breaker.
            if config.automatic_transition_to_half_open:
                self._schedule(wait_s)
        elif target is _HALF_OPEN:
            permitted = config.permitted_calls_in_half_open
            self._window = _CountWindow(permitted, config.minimum_calls)
            self._permits = permitted
            self._half_open_deadline_s = now + config.max_wait_in_half_open_s
            if config.max_wait_in_half_open_s > 0:
                self._schedule(config.max_wait_in_half_open_s)
        elif target is _FORCED_OPEN:
            self._attempts += 1
            self._window = _CountWindow(1, 1)
        elif target is _DISABLED:
            self._window = _CountWindow(1, 1)
        else:  # CLOSED or METRICS_ONLY
            self._attempts = 0
            self._window = self._closed_window()
            self._failure_exceeded_sent = False
            self._slow_exceeded_sent = False
        self._state = target
        if previous is not target and self.events.active:
            self.events.emit(
                KIND,
                self.name,
                "state_transition",
                {"from_state": previous.value, "to_state": target.value},
            )

    def _schedule(self, delay_s: float) -> None:
        try:
            self._timer = self.clock.call_later(delay_s, self._on_timer)
        except RuntimeError:
            # No running loop (plain-function use): the lazy check on the next call applies it.
            self._timer = None

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            self._apply_due_transitions(self.clock.monotonic())

    def _transition_now(self, target: CircuitState) -> None:
        with self._lock:
            self._transition(target, self.clock.monotonic())

    def transition_to_closed(self) -> None:
        """Close the breaker, starting with an empty window."""
        self._transition_now(_CLOSED)

    def transition_to_open(self) -> None:
        """Open the breaker now (it will allow trials after the wait)."""
        self._transition_now(_OPEN)

    def transition_to_half_open(self) -> None:
        """Start trials now."""
        self._transition_now(_HALF_OPEN)

    def transition_to_forced_open(self) -> None:
        """Reject every call until an operator closes, resets or disables the breaker."""
        self._transition_now(_FORCED_OPEN)

    def transition_to_disabled(self) -> None:
        """Permit every call and record nothing."""
        self._transition_now(_DISABLED)

    def transition_to_metrics_only(self) -> None:
        """Record and emit events, but never open."""
        self._transition_now(_METRICS_ONLY)

    def reset(self) -> None:
        """Back to CLOSED with an empty window and no open history; emits ``reset``."""
        with self._lock:
            self._transition(_CLOSED, self.clock.monotonic())
            if self.events.active:
                self.events.emit(KIND, self.name, "reset", {})

    # ------------------------------------------------------------------ call styles

    def guard(self) -> _Guard:
        """A context manager (``with`` or ``async with``) protecting one block."""
        return _Guard(self)

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` under the breaker."""
        if self._state is not _CLOSED:
            self._acquire_slow()
        monotonic = self.clock.monotonic
        start = monotonic()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.on_exception(monotonic() - start, exc)
            raise
        self.on_result(monotonic() - start, result)
        return result

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function ``fn(*args, **kwargs)`` under the breaker."""
        if self._state is not _CLOSED:
            self._acquire_slow()
        monotonic = self.clock.monotonic
        start = monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.on_exception(monotonic() - start, exc)
            raise
        self.on_result(monotonic() - start, result)
        return result

    def _decorate_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        # Closure variables instead of attribute lookups: the hot path the benchmark measures.
        breaker = self
        monotonic = breaker.clock.monotonic
        acquire_slow = breaker._acquire_slow
        on_result = breaker.on_result
        # Without a result predicate every returned value is a success: skip one call level.
        on_success = breaker.on_success if breaker._record_result is None else None
        on_exception = breaker.on_exception
        closed = _CLOSED

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if breaker._state is not closed:
                acquire_slow()
            start = monotonic()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                on_exception(monotonic() - start, exc)
                raise
            if on_success is not None:
                on_success(monotonic() - start)
            else:
                on_result(monotonic() - start, result)
            return result

        return wrapper

    def _decorate_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        breaker = self
        monotonic = breaker.clock.monotonic
        acquire_slow = breaker._acquire_slow
        on_result = breaker.on_result
        # Without a result predicate every returned value is a success: skip one call level.
        on_success = breaker.on_success if breaker._record_result is None else None
        on_exception = breaker.on_exception
        closed = _CLOSED

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if breaker._state is not closed:
                acquire_slow()
            start = monotonic()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                on_exception(monotonic() - start, exc)
                raise
            if on_success is not None:
                on_success(monotonic() - start)
            else:
                on_result(monotonic() - start, result)
            return result

        return wrapper
