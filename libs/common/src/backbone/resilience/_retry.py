"""Retry with exponential backoff, jitter, a total time budget, Retry-After hints and a budget.

Semantics follow Resilience4j's Retry (``max_attempts`` counts the first call; exceptions to retry
and to ignore; results to retry; when attempts run out the last exception is raised, or the last
result returned), with the extensions Resilience4j has had open for years:

* **Retry budget** (:class:`RetryBudget`, after Finagle's): every original call deposits
  ``ratio`` tokens, the budget also refills at ``min_retries_per_s``, and each retry withdraws a
  token; when none is left the retry is refused with :class:`RetryBudgetExhaustedError`. So
  across any interval, retries <= initial tokens + ratio * calls + min_retries_per_s * seconds,
  and a failing dependency never sees a retry storm. One budget can be shared by many retries.
* **Adaptive** (``adaptive=True``): the success rate of the last ``adaptive_window`` attempts
  stretches the delays (``x (1 + (1 - rate) * adaptive_delay_factor)``) and makes each retry cost
  ``1 / max(rate, 0.1)`` budget tokens, so retries thin out as the dependency degrades and come
  back as it recovers.

Deviations from Resilience4j: the default backoff is exponential (base ``wait_multiplier`` 2.0,
from ``wait_initial_s`` 0.5 s, capped by ``wait_max_s``) with full jitter, not a fixed 500 ms; a
Retry-After hint (an exception's ``retry_after_s`` attribute, e.g. :class:`RateLimitedError`,
:class:`CircuitOpenError`, or a custom ``retry_after`` extractor) raises the delay to at least the
hint, and a hint above ``retry_after_max_s`` ends the retries at once; ``timeout_s`` bounds the
whole call including waits (a retry whose wait would cross it is not attempted);
:class:`BaseException` that is not an :class:`Exception` is never retried.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from backbone.resilience._clock import Clock, SystemClock
from backbone.resilience._config import ExceptionTypes  # noqa: TC001 - pydantic needs it at runtime
from backbone.resilience._decorate import CallDecorator
from backbone.resilience._errors import RetryBudgetExhaustedError
from backbone.resilience._events import EventHub

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from types import TracebackType

__all__ = ["Attempt", "Retry", "RetryBudget", "RetryConfig", "default_retry_after"]

P = ParamSpec("P")
R = TypeVar("R")

KIND = "retry"

_GIVE_UP_ATTEMPTS = "attempts"
_GIVE_UP_TIMEOUT = "timeout"
_GIVE_UP_BUDGET = "budget"
_GIVE_UP_HINT = "retry_after_too_long"
_ADAPTIVE_MIN_SAMPLES = 10


class RetryConfig(BaseModel):
    """Settings of a retry.

    Attributes:
        max_attempts: Attempts in total, the first call included (1 disables retrying).
        wait_initial_s: Backoff before the first retry (before jitter).
        wait_multiplier: Growth per retry; 1 gives a fixed wait.
        wait_max_s: Upper bound of one backoff (a Retry-After hint may exceed it).
        jitter: ``full`` (uniform in [0, backoff]), ``decorrelated`` (AWS: uniform in
            [initial, 3 x previous], capped) or ``none``.
        timeout_s: Bound on the whole call, waits included; None for no bound.
        retry_exceptions: Exceptions to retry; empty means every ``Exception``.
        ignore_exceptions: Exceptions never retried (take precedence).
        honour_retry_after: Use the hint of the failure (``retry_after_s``) as the minimum delay.
        retry_after_max_s: A hint longer than this stops retrying at once.
        budget_ratio: Tokens deposited per original call; None disables the budget.
        budget_min_retries_per_s: Refill rate that allows retries even under low traffic.
        budget_max_tokens: Cap of the token bucket (also its initial fill is
            ``min(budget_min_retries_per_s, budget_max_tokens)``).
        adaptive: Scale delays and retry cost with the recent success rate.
        adaptive_window: Attempts remembered for the success rate.
        adaptive_delay_factor: Delay multiplier at 0 % success is ``1 + this``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1)
    wait_initial_s: float = Field(default=0.5, ge=0)
    wait_multiplier: float = Field(default=2.0, ge=1)
    wait_max_s: float = Field(default=30.0, ge=0)
    jitter: Literal["full", "decorrelated", "none"] = "full"
    timeout_s: float | None = Field(default=None, gt=0)
    retry_exceptions: ExceptionTypes = ()
    ignore_exceptions: ExceptionTypes = ()
    honour_retry_after: bool = True
    retry_after_max_s: float = Field(default=30.0, ge=0)
    budget_ratio: float | None = Field(default=0.2, gt=0)
    budget_min_retries_per_s: float = Field(default=10.0, ge=0)
    budget_max_tokens: float = Field(default=100.0, ge=1)
    adaptive: bool = False
    adaptive_window: int = Field(default=100, ge=1)
    adaptive_delay_factor: float = Field(default=3.0, ge=0)


class RetryBudget:
    """A token bucket that limits retries to a share of recent traffic.

    Args:
        ratio: Tokens deposited per original call (0.2: at most one retry per five calls).
        min_retries_per_s: Tokens added per second regardless of traffic.
        max_tokens: Cap of the bucket.
        clock: Time source.

    Attributes:
        deposits, withdrawals, refusals: Cumulative counters.
    """

    __slots__ = (
        "_clock",
        "_last_s",
        "_max_tokens",
        "_min_per_s",
        "_ratio",
        "_tokens",
        "deposits",
        "refusals",
        "withdrawals",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries_per_s: float = 10.0,
        max_tokens: float = 100.0,
        clock: Clock | None = None,
    ) -> None:
        self._ratio = ratio
        self._min_per_s = min_retries_per_s
        self._max_tokens = max_tokens
        self._clock: Clock = clock or SystemClock()
        self._tokens = min(min_retries_per_s, max_tokens)
        self._last_s = self._clock.monotonic()
        self.deposits = 0
        self.withdrawals = 0
        self.refusals = 0

    @property
    def initial_tokens(self) -> float:
        """What the bucket held at creation."""
        return min(self._min_per_s, self._max_tokens)

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def deposit(self) -> None:
        """Record an original call (not a retry)."""
        self.deposits += 1
        tokens = self._tokens + self._ratio
        self._tokens = min(self._max_tokens, tokens)

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = now - self._last_s
        if elapsed > 0:
            self._last_s = now
            self._tokens = min(self._max_tokens, self._tokens + elapsed * self._min_per_s)

    def try_withdraw(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens for a retry; False (and nothing taken) when too few are left."""
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            self.withdrawals += 1
            return True
        self.refusals += 1
        return False


def default_retry_after(exc: BaseException) -> float | None:
    """The Retry-After hint of an exception: its ``retry_after_s`` (or ``retry_after``) number."""
    for attr in ("retry_after_s", "retry_after"):
        value = getattr(exc, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


class Attempt:
    """One attempt of :meth:`Retry.attempts`; ``with attempt:`` classifies the block's outcome.

    Attributes:
        number: 1 for the first call, 2 for the first retry, ...
    """

    __slots__ = ("_delay_s", "_retry", "_started_s", "_succeeded", "number", "previous_s")

    def __init__(self, retry: Retry, number: int, previous_s: float, started_s: float) -> None:
        self._retry = retry
        self.number = number
        self.previous_s = previous_s
        self._started_s = started_s
        self._delay_s: float | None = None
        self._succeeded = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        retry = self._retry
        if exc is None:
            if retry.config.adaptive:
                retry._track(ok=True)  # noqa: SLF001 - same module
            retry._on_success(self.number)  # noqa: SLF001 - same module
            self._succeeded = True
            return False
        if not isinstance(exc, Exception):
            return False
        # Raises (the same exception, or RetryBudgetExhaustedError) when giving up.
        self._delay_s = retry._after_exception(  # noqa: SLF001 - same module
            exc, self.number, self.previous_s, self._started_s
        )
        return True  # swallowed: the iterator sleeps and yields the next attempt


class Retry(CallDecorator):
    """A named retry policy (see the module docstring for the semantics).

    Args:
        name: Identifies the retry in events, metrics and remote control.
        config: Attempts, backoff, budget; defaults when omitted.
        retry_on_result: Results for which it is true are retried (the last one is returned).
        retry_exception: Extra predicate: exceptions for which it is true are retried.
        retry_after: Extracts a Retry-After hint (seconds) from an exception.
        budget: A budget to share with other retries; by default one is built from ``config``
            (none when ``config.budget_ratio`` is None).
        clock: Time source; its ``sleep`` does the waiting.
        rng: Random source of the jitter (seed it for reproducible tests).
        events: Where events go; a private hub when omitted.

    Attributes:
        successful_without_retry, successful_with_retry, failed_without_retry,
        failed_with_retry, budget_exhausted, retries: Cumulative counters.
    """

    __slots__ = (
        "_outcomes",
        "_outcomes_head",
        "_outcomes_ok",
        "_retry_after",
        "_retry_exception",
        "_retry_on_result",
        "_retry_types",
        "_rng",
        "budget",
        "budget_exhausted",
        "clock",
        "config",
        "events",
        "failed_with_retry",
        "failed_without_retry",
        "name",
        "retries",
        "successful_with_retry",
        "successful_without_retry",
    )

    def __init__(
        self,
        name: str,
        config: RetryConfig | None = None,
        *,
        retry_on_result: Callable[[Any], bool] | None = None,
        retry_exception: Callable[[BaseException], bool] | None = None,
        retry_after: Callable[[BaseException], float | None] = default_retry_after,
        budget: RetryBudget | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.name = name
        self.config = config = config or RetryConfig()
        self.clock: Clock = clock or SystemClock()
        self.events = events or EventHub()
        self._retry_on_result = retry_on_result
        self._retry_exception = retry_exception
        self._retry_after = retry_after
        self._retry_types: tuple[type[BaseException], ...] = config.retry_exceptions or (Exception,)
        # Jitter is not security-sensitive; a seedable PRNG keeps tests reproducible.
        self._rng = rng or random.Random()  # noqa: S311
        if budget is None and config.budget_ratio is not None:
            budget = RetryBudget(
                ratio=config.budget_ratio,
                min_retries_per_s=config.budget_min_retries_per_s,
                max_tokens=config.budget_max_tokens,
                clock=self.clock,
            )
        self.budget = budget
        self._outcomes: list[bool] = []
        self._outcomes_head = 0
        self._outcomes_ok = 0
        self.successful_without_retry = 0
        self.successful_with_retry = 0
        self.failed_without_retry = 0
        self.failed_with_retry = 0
        self.budget_exhausted = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"Retry({self.name!r}, max_attempts={self.config.max_attempts})"

    # ------------------------------------------------------------------ adaptive tracking

    @property
    def success_rate(self) -> float:
        """Share of successful attempts among the last ``adaptive_window``.

        1.0 until ``min(10, adaptive_window)`` attempts are known: a couple of early failures
        are not a trend.
        """
        n = len(self._outcomes)
        if n < min(_ADAPTIVE_MIN_SAMPLES, self.config.adaptive_window):
            return 1.0
        return self._outcomes_ok / n

    def _track(self, *, ok: bool) -> None:
        outcomes = self._outcomes
        if len(outcomes) < self.config.adaptive_window:
            outcomes.append(ok)
        else:
            head = self._outcomes_head
            self._outcomes_ok -= outcomes[head]
            outcomes[head] = ok
            self._outcomes_head = (head + 1) % self.config.adaptive_window
        self._outcomes_ok += ok

    # ------------------------------------------------------------------ decisions

    def backoff_s(self, retry_number: int, previous_s: float) -> float:
        """The delay before retry number ``retry_number`` (1-based), before hints and adaptation."""
        config = self.config
        if config.jitter == "decorrelated":
            upper = max(previous_s * 3.0, config.wait_initial_s)
            return min(config.wait_max_s, self._rng.uniform(config.wait_initial_s, upper))
        ceiling = min(
            config.wait_max_s, config.wait_initial_s * config.wait_multiplier ** (retry_number - 1)
        )
        if config.jitter == "full":
            return self._rng.uniform(0.0, ceiling)
        return ceiling

    def _is_retryable(self, exc: BaseException) -> bool:
        config = self.config
        if not isinstance(exc, Exception) or isinstance(exc, config.ignore_exceptions):
            return False
        return isinstance(exc, self._retry_types) or (
            self._retry_exception is not None and self._retry_exception(exc)
        )

    def _plan(
        self,
        attempt: int,
        hint_s: float | None,
        previous_s: float,
        started_s: float,
    ) -> float | str:
        """Delay before the next attempt, or the reason to give up."""
        config = self.config
        if attempt >= config.max_attempts:
            return _GIVE_UP_ATTEMPTS
        delay_s = self.backoff_s(attempt, previous_s)
        rate = 1.0
        if config.adaptive:
            rate = self.success_rate
            delay_s *= 1.0 + (1.0 - rate) * config.adaptive_delay_factor
        if hint_s is not None and config.honour_retry_after:
            if hint_s > config.retry_after_max_s:
                return _GIVE_UP_HINT
            delay_s = max(delay_s, hint_s)
        if (
            config.timeout_s is not None
            and self.clock.monotonic() + delay_s > started_s + config.timeout_s
        ):
            return _GIVE_UP_TIMEOUT
        if self.budget is not None and not self.budget.try_withdraw(1.0 / max(rate, 0.1)):
            return _GIVE_UP_BUDGET
        return delay_s

    def _on_retry(self, attempt: int, delay_s: float, reason: str) -> None:
        self.retries += 1
        if self.events.active:
            self.events.emit(
                KIND,
                self.name,
                "retry",
                {"attempt": attempt, "delay_s": delay_s, "reason": reason[:500]},
            )

    def _on_success(self, attempt: int) -> None:
        if attempt == 1:
            self.successful_without_retry += 1
        else:
            self.successful_with_retry += 1
            if self.events.active:
                self.events.emit(KIND, self.name, "success", {"attempts": attempt})

    def _give_up(self, attempt: int, reason: str, error: str) -> None:
        if attempt == 1:
            self.failed_without_retry += 1
        else:
            self.failed_with_retry += 1
        if reason == _GIVE_UP_BUDGET:
            self.budget_exhausted += 1
        if self.events.active:
            event = "budget_exhausted" if reason == _GIVE_UP_BUDGET else "error"
            self.events.emit(
                KIND,
                self.name,
                event,
                {"attempts": attempt, "reason": reason, "error": error[:500]},
            )

    def _after_exception(
        self, exc: Exception, attempt: int, previous_s: float, started_s: float
    ) -> float:
        """Delay before the next attempt; raises when giving up (the caller re-raises ``exc``)."""
        config = self.config
        if config.adaptive:
            self._track(ok=False)
        error = f"{type(exc).__name__}: {exc}"
        if not self._is_retryable(exc):
            self._give_up(attempt, "not_retryable", error)
            raise exc
        hint_s = self._retry_after(exc) if config.honour_retry_after else None
        plan = self._plan(attempt, hint_s, previous_s, started_s)
        if isinstance(plan, str):
            self._give_up(attempt, plan, error)
            if plan == _GIVE_UP_BUDGET:
                raise RetryBudgetExhaustedError(
                    self.name, attempts=attempt, last_error=exc
                ) from exc
            raise exc
        self._on_retry(attempt, plan, error)
        return plan

    def _after_result(
        self, result: object, attempt: int, previous_s: float, started_s: float
    ) -> float | None:
        """Delay before the next attempt, or None to return ``result``."""
        if self._retry_on_result is None or not self._retry_on_result(result):
            if self.config.adaptive:
                self._track(ok=True)
            self._on_success(attempt)
            return None
        if self.config.adaptive:
            self._track(ok=False)
        plan = self._plan(attempt, None, previous_s, started_s)
        if isinstance(plan, str):
            self._give_up(attempt, plan, f"result: {result!r:.200}")
            return None
        self._on_retry(attempt, plan, f"result: {result!r:.200}")
        return plan

    # ------------------------------------------------------------------ call styles

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)``, retrying per the policy."""
        budget = self.budget
        if budget is not None:
            budget.deposit()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified by the policy
            first_error: Exception = exc
        else:
            if self._retry_on_result is None and not self.config.adaptive:
                self.successful_without_retry += 1
                return result
            delay_s = self._after_result(result, 1, 0.0, self.clock.monotonic())
            if delay_s is None:
                return result
            return await self._retry_loop(fn, args, kwargs, None, first_delay_s=delay_s)
        # Outside the except block, so later failures do not chain onto the first one.
        return await self._retry_loop(fn, args, kwargs, first_error)

    async def _retry_loop(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        first_error: Exception | None,
        *,
        first_delay_s: float | None = None,
    ) -> R:
        # Started "now" on the first failure: the first attempt's duration is not known here,
        # and timeout_s guards against long waits, which all come after it.
        started_s = self.clock.monotonic()
        attempt = 1
        if first_error is not None:
            delay_s = self._after_exception(first_error, attempt, 0.0, started_s)
        else:
            delay_s = cast("float", first_delay_s)
        while True:
            await self.clock.sleep(delay_s)
            attempt += 1
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified by the policy
                delay_s = self._after_exception(exc, attempt, delay_s, started_s)
                continue
            next_delay_s = self._after_result(result, attempt, delay_s, started_s)
            if next_delay_s is None:
                return result
            delay_s = next_delay_s

    async def attempts(self) -> AsyncIterator[Attempt]:
        """Retry a block instead of a function (stamina style).

        ::

            async for attempt in retry.attempts():
                with attempt:
                    await send(message)

        The loop ends after the first attempt whose block succeeds; when the policy gives up,
        the block's exception (or :class:`RetryBudgetExhaustedError`) propagates from ``with``.
        """
        if self.budget is not None:
            self.budget.deposit()
        started_s = self.clock.monotonic()
        attempt = Attempt(self, 1, 0.0, started_s)
        while True:
            yield attempt
            delay_s = attempt._delay_s  # noqa: SLF001 - same module
            if attempt._succeeded or delay_s is None:  # noqa: SLF001 - same module
                return
            await self.clock.sleep(delay_s)
            attempt = Attempt(self, attempt.number + 1, delay_s, started_s)

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function ``fn(*args, **kwargs)``, retrying (waits with ``sleep_sync``)."""
        budget = self.budget
        if budget is not None:
            budget.deposit()
        started_s = self.clock.monotonic()
        attempt = 1
        delay_s = 0.0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified by the policy
                delay_s = self._after_exception(exc, attempt, delay_s, started_s)
            else:
                next_delay_s = self._after_result(result, attempt, delay_s, started_s)
                if next_delay_s is None:
                    return result
                delay_s = next_delay_s
            self.clock.sleep_sync(delay_s)
            attempt += 1

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the counters, the budget and the success rate."""
        return {
            "kind": KIND,
            "name": self.name,
            "successful_without_retry": self.successful_without_retry,
            "successful_with_retry": self.successful_with_retry,
            "failed_without_retry": self.failed_without_retry,
            "failed_with_retry": self.failed_with_retry,
            "budget_exhausted": self.budget_exhausted,
            "retries": self.retries,
            "budget_tokens": None if self.budget is None else self.budget.tokens,
            "success_rate": self.success_rate,
        }

    def reset(self) -> None:
        """Forget the adaptive history (counters stay monotonic)."""
        self._outcomes = []
        self._outcomes_head = 0
        self._outcomes_ok = 0
