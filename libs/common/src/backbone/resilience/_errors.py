"""Errors of the resilience patterns, rooted at :class:`backbone.errors.ResilienceError`.

::

    ResilienceError (backbone.errors)
    ├── CircuitOpenError              breaker OPEN / FORCED_OPEN / HALF_OPEN quota used up
    ├── BulkheadFullError             no slot free within the bulkhead's max wait
    ├── RateLimitedError              no permit within the limiter's max wait
    ├── RetryBudgetExhaustedError     the retry budget refused a retry
    └── TimeLimitExceededError (TimeoutError)
"""

from __future__ import annotations

from backbone.errors import ResilienceError

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "RateLimitedError",
    "ResilienceError",
    "RetryBudgetExhaustedError",
    "TimeLimitExceededError",
]


class CircuitOpenError(ResilienceError):
    """The circuit breaker did not permit the call (Resilience4j's ``CallNotPermittedException``).

    Attributes:
        name: The breaker's name.
        state: The breaker's state when it refused (``"OPEN"``, ``"FORCED_OPEN"``, ``"HALF_OPEN"``).
        remaining_wait_s: Seconds until the breaker will let a trial call through (0 when it is
            half-open with its quota in use, ``inf`` when forced open).
    """

    def __init__(self, name: str, *, state: str, remaining_wait_s: float) -> None:
        super().__init__(
            f"circuit breaker {name!r} is {state}; retry in {remaining_wait_s:.3f}s",
        )
        self.name = name
        self.state = state
        self.remaining_wait_s = remaining_wait_s

    @property
    def retry_after_s(self) -> float:
        """The wait as a Retry-After hint, so :class:`Retry` honours it."""
        return self.remaining_wait_s


class BulkheadFullError(ResilienceError):
    """No concurrency slot became free within the bulkhead's ``max_wait_s``.

    Attributes:
        name: The bulkhead's name.
        max_concurrent: Its limit when the call was refused.
    """

    def __init__(self, name: str, *, max_concurrent: int) -> None:
        super().__init__(f"bulkhead {name!r} is full ({max_concurrent} concurrent calls)")
        self.name = name
        self.max_concurrent = max_concurrent


class RateLimitedError(ResilienceError):
    """No permit was available within the rate limiter's ``max_wait_s``.

    Attributes:
        name: The limiter's name.
        key: The key for keyed limiters, else None.
        retry_after_s: Seconds until a permit will be available (a Retry-After hint).
    """

    def __init__(self, name: str, *, retry_after_s: float, key: str | None = None) -> None:
        where = f"{name!r}" if key is None else f"{name!r} for key {key!r}"
        super().__init__(f"rate limiter {where} refused the call; retry in {retry_after_s:.3f}s")
        self.name = name
        self.key = key
        self.retry_after_s = retry_after_s


class RetryBudgetExhaustedError(ResilienceError):
    """The retry budget refused a retry; the last failure is the ``__cause__``.

    Attributes:
        name: The retry's name.
        attempts: Attempts made before giving up.
        last_error: The exception of the last attempt.
    """

    def __init__(self, name: str, *, attempts: int, last_error: BaseException) -> None:
        super().__init__(
            f"retry {name!r}: budget exhausted after {attempts} attempt(s); "
            f"last error: {type(last_error).__name__}: {last_error}",
        )
        self.name = name
        self.attempts = attempts
        self.last_error = last_error


class TimeLimitExceededError(ResilienceError, TimeoutError):
    """The call did not finish within the time limiter's ``timeout_s`` (the call was cancelled).

    Attributes:
        name: The time limiter's name.
        timeout_s: The limit.
    """

    def __init__(self, name: str, *, timeout_s: float) -> None:
        super().__init__(f"time limiter {name!r}: call exceeded {timeout_s}s")
        self.name = name
        self.timeout_s = timeout_s
