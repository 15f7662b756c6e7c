"""One documented order for combining the patterns.

:class:`Policy` applies, from the outside in::

    retry( circuit_breaker( rate_limiter( bulkhead( time_limiter( call ) ) ) ) )

as in the issue and close to Resilience4j's ``Decorators``: each retry attempt goes through the
breaker (so an open breaker stops a retry storm at once and its ``remaining_wait_s`` becomes the
retry's Retry-After hint), then waits for a rate permit, then for a concurrency slot, and only the
call itself runs under the deadline, so time spent queueing does not eat the call's timeout.
(Resilience4j's Spring aspects put the TimeLimiter outside the Bulkhead; the bulkhead has its own
``max_wait_s`` here.)

Deviation: a rejection by the local rate limiter or bulkhead (:class:`RateLimitedError`,
:class:`BulkheadFullError`) is not recorded by the breaker - it says nothing about the
dependency - and gives the breaker's half-open permit back. In Resilience4j you would list those
exceptions in ``ignoreExceptions`` to get the same effect.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from backbone.resilience._decorate import CallDecorator
from backbone.resilience._errors import BulkheadFullError, RateLimitedError
from backbone.resilience._timelimiter import _Deadline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from backbone.resilience._breaker import CircuitBreaker
    from backbone.resilience._bulkhead import Bulkhead
    from backbone.resilience._ratelimiter import RateLimiter
    from backbone.resilience._retry import Retry
    from backbone.resilience._timelimiter import TimeLimiter

__all__ = ["Policy"]

P = ParamSpec("P")
R = TypeVar("R")

_LOCAL_REJECTIONS = (RateLimitedError, BulkheadFullError)


class Policy(CallDecorator):
    """Any subset of the five patterns, applied in the documented order.

    Args:
        retry: Outermost: retries whole attempts.
        circuit_breaker: Records each attempt's outcome.
        rate_limiter: A permit per attempt.
        bulkhead: A slot per attempt.
        time_limiter: Innermost: the deadline of the call itself.

    Use it as a decorator on a coroutine function or a plain function, or through :meth:`call` /
    :meth:`call_sync`.
    """

    __slots__ = ("bulkhead", "circuit_breaker", "rate_limiter", "retry", "time_limiter")

    def __init__(
        self,
        *,
        retry: Retry | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rate_limiter: RateLimiter | None = None,
        bulkhead: Bulkhead | None = None,
        time_limiter: TimeLimiter | None = None,
    ) -> None:
        self.retry = retry
        self.circuit_breaker = circuit_breaker
        self.rate_limiter = rate_limiter
        self.bulkhead = bulkhead
        self.time_limiter = time_limiter

    def __repr__(self) -> str:
        parts = [
            f"{label}={pattern.name!r}"
            for label, pattern in (
                ("retry", self.retry),
                ("circuit_breaker", self.circuit_breaker),
                ("rate_limiter", self.rate_limiter),
                ("bulkhead", self.bulkhead),
                ("time_limiter", self.time_limiter),
            )
            if pattern is not None
        ]
        return f"Policy({', '.join(parts)})"

    async def _attempt(  # noqa: C901, PLR0912 - inlined on purpose: one frame per attempt
        self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        breaker = self.circuit_breaker
        limiter = self.rate_limiter
        bulkhead = self.bulkhead
        time_limiter = self.time_limiter
        if breaker is not None:
            breaker.acquire()
            monotonic = breaker.clock.monotonic
            start = monotonic()
        try:
            if limiter is not None:
                await limiter.acquire()
            if bulkhead is not None:
                await bulkhead.acquire()
                slot_start = bulkhead.clock.monotonic()
                try:
                    if time_limiter is not None:
                        async with _Deadline(time_limiter):
                            result = await fn(*args, **kwargs)
                    else:
                        result = await fn(*args, **kwargs)
                except BaseException as exc:
                    bulkhead.release(bulkhead.clock.monotonic() - slot_start, exc)
                    raise
                bulkhead.release(bulkhead.clock.monotonic() - slot_start, None)
            elif time_limiter is not None:
                async with _Deadline(time_limiter):
                    result = await fn(*args, **kwargs)
            else:
                result = await fn(*args, **kwargs)
        except BaseException as exc:
            if breaker is not None:
                if isinstance(exc, _LOCAL_REJECTIONS):
                    breaker.release()
                else:
                    breaker.on_exception(monotonic() - start, exc)
            raise
        if breaker is not None:
            breaker.on_result(monotonic() - start, result)
        return result

    def _attempt_sync(
        self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        breaker = self.circuit_breaker
        limiter = self.rate_limiter
        bulkhead = self.bulkhead
        time_limiter = self.time_limiter
        if breaker is not None:
            breaker.acquire()
            monotonic = breaker.clock.monotonic
            start = monotonic()
        try:
            if limiter is not None:
                limiter.acquire_sync()
            if bulkhead is not None:
                if time_limiter is not None:
                    result = bulkhead.call_sync(time_limiter.call_sync, fn, *args, **kwargs)
                else:
                    result = bulkhead.call_sync(fn, *args, **kwargs)
            elif time_limiter is not None:
                result = time_limiter.call_sync(fn, *args, **kwargs)
            else:
                result = fn(*args, **kwargs)
        except BaseException as exc:
            if breaker is not None:
                if isinstance(exc, _LOCAL_REJECTIONS):
                    breaker.release()
                else:
                    breaker.on_exception(monotonic() - start, exc)
            raise
        if breaker is not None:
            breaker.on_result(monotonic() - start, result)
        return result

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` under every configured pattern."""
        if self.retry is not None:
            return await self.retry.call(self._attempt, fn, args, kwargs)
        return await self._attempt(fn, args, kwargs)

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function ``fn(*args, **kwargs)`` under every configured pattern."""
        if self.retry is not None:
            return self.retry.call_sync(self._attempt_sync, fn, args, kwargs)
        return self._attempt_sync(fn, args, kwargs)

    def _decorate_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        attempt = self._attempt
        retry = self.retry

        if retry is None:

            @functools.wraps(fn)
            async def plain(*args: P.args, **kwargs: P.kwargs) -> R:
                return await attempt(fn, args, kwargs)

            return plain

        retry_call = retry.call

        @functools.wraps(fn)
        async def retried(*args: P.args, **kwargs: P.kwargs) -> R:
            return await retry_call(attempt, fn, args, kwargs)

        return retried
