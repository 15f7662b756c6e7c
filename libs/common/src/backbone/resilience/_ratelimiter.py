"""Token-bucket rate limiter, plain and keyed (e.g. per API key), with bounded memory.

The bucket holds up to ``burst`` permits and refills at ``rate_per_s``; a call takes one permit.
When none is left the caller reserves the next one and waits for it, if that wait is at most
``max_wait_s``; otherwise it gets :class:`RateLimitedError` carrying ``retry_after_s``. Because
waiting callers reserve their permit up front, they are served in order and the limiter never
admits more than ``rate_per_s * t + burst`` calls in any window of ``t`` seconds.

Deviation from Resilience4j: its RateLimiter refreshes ``limitForPeriod`` permits every
``limitRefreshPeriod`` (fixed windows, which admit up to twice the limit around a boundary); this
one is a token bucket, which has no boundary effect. ``max_wait_s`` plays the part of
``timeoutDuration`` (default 5 s, as there).

The rate can be changed at runtime (:meth:`RateLimiter.set_rate`, Resilience4j's
``changeLimitForPeriod``) and put back with :meth:`RateLimiter.restore_rate`; remote control
exposes both (``set_rate`` / ``restore_rate``) so an operator or the anomaly detector can throttle
a producer. Permits accrued before the change are credited at the old rate, those after it at
the new one; a smaller bucket drops the permits that no longer fit.

:class:`KeyedRateLimiter` keeps one bucket per key in an LRU map of at most ``max_keys``
entries. A bucket idle for ``burst / rate_per_s`` seconds is full again, so dropping it loses
nothing; only when more than ``max_keys`` keys are active at once could an evicted key get a
fresh burst (raise ``max_keys`` for such traffic).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import math
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from backbone.errors import ConfigError
from backbone.resilience._clock import Clock, SystemClock
from backbone.resilience._decorate import CallDecorator
from backbone.resilience._errors import RateLimitedError
from backbone.resilience._events import EventHub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from types import TracebackType

__all__ = ["KeyedRateLimiter", "RateLimiter", "RateLimiterConfig"]

P = ParamSpec("P")
R = TypeVar("R")

KIND = "ratelimiter"

# Float refills accumulate rounding error; a permit this close to whole is whole.
_EPSILON = 1e-9


class RateLimiterConfig(BaseModel):
    """Settings of a rate limiter.

    Attributes:
        rate_per_s: Permits added per second.
        burst: Bucket capacity; one second's worth of permits (at least 1) when omitted.
        max_wait_s: Longest wait for a permit; 0 rejects at once.
        max_keys: Keyed limiters: buckets kept in memory.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_per_s: float = Field(default=100.0, gt=0)
    burst: float | None = Field(default=None, ge=1)
    max_wait_s: float = Field(default=5.0, ge=0)
    max_keys: int = Field(default=10_000, ge=1)

    @property
    def capacity(self) -> float:
        """The effective burst."""
        return self.burst if self.burst is not None else max(1.0, self.rate_per_s)


def _checked(rate_per_s: float, burst: float | None) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        msg = f"rate_per_s must be a finite number > 0, not {rate_per_s!r}"
        raise ConfigError(msg, variable="rate_per_s")
    if burst is not None and not (math.isfinite(burst) and burst >= 1):
        msg = f"burst must be a finite number >= 1, not {burst!r}"
        raise ConfigError(msg, variable="burst")


class _Bucket:
    __slots__ = ("last_s", "tokens")

    def __init__(self, tokens: float, last_s: float) -> None:
        self.tokens = tokens
        self.last_s = last_s


class _Limiter(abc.ABC):
    """What plain and keyed limiters share: the bucket arithmetic, counters and events."""

    __slots__ = (
        "_burst",
        "_lock",
        "_max_wait_s",
        "_rate",
        "admitted_calls",
        "clock",
        "config",
        "events",
        "name",
        "rejected_calls",
        "waited_calls",
    )

    def __init__(
        self,
        name: str,
        config: RateLimiterConfig | None,
        clock: Clock | None,
        events: EventHub | None,
    ) -> None:
        self.name = name
        self.config = config = config or RateLimiterConfig()
        self.clock: Clock = clock or SystemClock()
        self.events = events or EventHub()
        self._rate = config.rate_per_s
        self._burst = config.capacity
        self._max_wait_s = config.max_wait_s
        self._lock = threading.Lock()
        self.admitted_calls = 0
        self.rejected_calls = 0
        self.waited_calls = 0

    def _locked_bucket(self, key: str) -> _Bucket:
        """``key``'s bucket, the caller holding the lock (keyed limiters only)."""
        raise TypeError(f"{type(self).__name__} has no bucket for {key!r}: it is not keyed")

    def _reserve(self, bucket: _Bucket | None, max_wait_s: float, key: str | None) -> float:
        """Take a permit now or reserve one; the wait in seconds, or raise when too long.

        ``bucket`` None: ``key``'s bucket, looked up under the same lock (one lock per call).
        """
        with self._lock:
            if bucket is None:
                bucket = self._locked_bucket(key or "")
            now = self.clock.monotonic()
            tokens = bucket.tokens + (now - bucket.last_s) * self._rate
            tokens = min(tokens, self._burst)
            bucket.last_s = now
            if tokens >= 1.0 - _EPSILON:
                bucket.tokens = tokens - 1.0
                self.admitted_calls += 1
                return 0.0
            wait_s = (1.0 - tokens) / self._rate
            if wait_s > max_wait_s:
                bucket.tokens = tokens
                self.rejected_calls += 1
                rejected = True
            else:
                bucket.tokens = tokens - 1.0
                self.admitted_calls += 1
                self.waited_calls += 1
                rejected = False
        if rejected:
            if self.events.active:
                self.events.emit(
                    KIND, self.name, "call_rejected", {"retry_after_s": wait_s, "key": key}
                )
            raise RateLimitedError(self.name, retry_after_s=wait_s, key=key)
        return wait_s

    def _give_back(self, bucket: _Bucket) -> None:
        with self._lock:
            bucket.tokens += 1.0
            self.admitted_calls -= 1

    async def _acquire(self, bucket: _Bucket, max_wait_s: float, key: str | None) -> None:
        wait_s = self._reserve(bucket, max_wait_s, key)
        if wait_s > 0:
            try:
                await self.clock.sleep(wait_s)
            except asyncio.CancelledError:
                self._give_back(bucket)
                raise

    def _acquire_sync(self, bucket: _Bucket | None, max_wait_s: float, key: str | None) -> None:
        wait_s = self._reserve(bucket, max_wait_s, key)
        if wait_s > 0:
            self.clock.sleep_sync(wait_s)

    def _available(self, bucket: _Bucket) -> float:
        now = self.clock.monotonic()
        return min(self._burst, bucket.tokens + (now - bucket.last_s) * self._rate)

    @abc.abstractmethod
    def _buckets_held(self) -> list[_Bucket]:
        """Every bucket the limiter holds now (the rate change brings each up to date)."""

    @property
    def rate_per_s(self) -> float:
        """The rate in force (the configured one unless :meth:`set_rate` changed it)."""
        return self._rate

    @property
    def burst(self) -> float:
        """The bucket capacity in force."""
        return self._burst

    @property
    def rate_changed(self) -> bool:
        """Whether the rate in force differs from the configured one."""
        return self._rate != self.config.rate_per_s or self._burst != self.config.capacity

    def set_rate(self, rate_per_s: float, *, burst: float | None = None) -> None:
        """Change the rate at runtime (Resilience4j's ``changeLimitForPeriod``).

        Thread and task safe: the change happens under the limiter's lock. Every bucket is
        first brought up to date at the old rate, so the time before the change never earns
        permits at the new rate; tokens above the new capacity are dropped. Callers already
        waiting on a reservation keep their place.

        Args:
            rate_per_s: The new rate (> 0).
            burst: The new capacity (>= 1). When omitted it follows the rate: one second's worth
                (at least 1) if no burst was configured, else the configured burst scaled by
                ``rate_per_s / configured rate`` (at least 1), so throttling to 10 % does not
                leave a full-size burst open.

        Raises:
            ConfigError: ``rate_per_s`` or ``burst`` is out of range.
        """
        _checked(rate_per_s, burst)
        if burst is None:
            configured = self.config
            if configured.burst is None:
                burst = max(1.0, rate_per_s)
            else:
                burst = max(1.0, configured.burst * rate_per_s / configured.rate_per_s)
        self._change(rate_per_s, burst, "rate_changed")

    def restore_rate(self) -> None:
        """Go back to the configured rate and burst (the bucket is not refilled)."""
        self._change(self.config.rate_per_s, self.config.capacity, "rate_restored")

    def _change(self, rate_per_s: float, burst: float, event: str) -> None:
        with self._lock:
            previous = self._rate
            now = self.clock.monotonic()
            for bucket in self._buckets_held():
                tokens = bucket.tokens + (now - bucket.last_s) * previous
                bucket.tokens = min(tokens, self._burst, burst)
                bucket.last_s = now
            self._rate = rate_per_s
            self._burst = burst
        if self.events.active:
            self.events.emit(
                KIND,
                self.name,
                event,
                {"rate_per_s": rate_per_s, "burst": burst, "previous_rate_per_s": previous},
            )


class RateLimiter(_Limiter, CallDecorator):
    """A named token-bucket rate limiter (see the module docstring).

    Use ``async with limiter:`` (or ``with``) before a call, the decorator, or :meth:`call`.

    Args:
        name: Identifies the limiter in events, metrics and remote control.
        config: Rate, burst and wait; defaults (100/s, burst 100, wait 5 s) when omitted.
        clock: Time source; its ``sleep`` does the waiting.
        events: Where events go; a private hub when omitted.

    Attributes:
        admitted_calls, rejected_calls, waited_calls: Cumulative counters.
    """

    __slots__ = ("_bucket",)

    def __init__(
        self,
        name: str,
        config: RateLimiterConfig | None = None,
        *,
        clock: Clock | None = None,
        events: EventHub | None = None,
    ) -> None:
        super().__init__(name, config, clock, events)
        self._bucket = _Bucket(self._burst, self.clock.monotonic())

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, rate_per_s={self._rate}, burst={self._burst})"

    def _buckets_held(self) -> list[_Bucket]:
        return [self._bucket]

    @property
    def available_permits(self) -> float:
        """Permits in the bucket now (negative while callers wait on reservations)."""
        return self._available(self._bucket)

    async def acquire(self, *, max_wait_s: float | None = None) -> None:
        """Take a permit, waiting for it up to ``max_wait_s`` (default: the configured one)."""
        await self._acquire(
            self._bucket, self._max_wait_s if max_wait_s is None else max_wait_s, None
        )

    def acquire_sync(self, *, max_wait_s: float | None = None) -> None:
        """Blocking variant of :meth:`acquire` (``clock.sleep_sync`` waits)."""
        self._acquire_sync(
            self._bucket, self._max_wait_s if max_wait_s is None else max_wait_s, None
        )

    def try_acquire(self) -> bool:
        """Take a permit only if one is available now."""
        try:
            self._reserve(self._bucket, 0.0, None)
        except RateLimitedError:
            return False
        return True

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "kind": KIND,
            "name": self.name,
            "rate_per_s": self._rate,
            "burst": self._burst,
            "configured_rate_per_s": self.config.rate_per_s,
            "available_permits": self.available_permits,
            "admitted_calls": self.admitted_calls,
            "rejected_calls": self.rejected_calls,
            "waited_calls": self.waited_calls,
        }

    def reset(self) -> None:
        """Back to the configured rate and burst, with a full bucket."""
        with self._lock:
            self._rate = self.config.rate_per_s
            self._burst = self.config.capacity
            self._bucket = _Bucket(self._burst, self.clock.monotonic())

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __enter__(self) -> Self:
        self.acquire_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Take a permit, then await ``fn(*args, **kwargs)``."""
        await self._acquire(self._bucket, self._max_wait_s, None)
        return await fn(*args, **kwargs)

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Take a permit, then call the plain function."""
        self._acquire_sync(self._bucket, self._max_wait_s, None)
        return fn(*args, **kwargs)

    def _decorate_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        reserve = self._reserve
        max_wait_s = self._max_wait_s

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            # Inlined acquire: no extra coroutine frame when a permit is available.
            bucket = self._bucket
            wait_s = reserve(bucket, max_wait_s, None)
            if wait_s > 0:
                try:
                    await self.clock.sleep(wait_s)
                except asyncio.CancelledError:
                    self._give_back(bucket)
                    raise
            return await fn(*args, **kwargs)

        return wrapper


class KeyedRateLimiter(_Limiter):
    """One token bucket per key (API key, client IP, tenant), at most ``max_keys`` in memory.

    Args:
        name: Identifies the limiter in events, metrics and remote control.
        config: Rate, burst, wait and ``max_keys`` applied to every key.
        clock: Time source.
        events: Where events go; a private hub when omitted.

    Attributes:
        evicted_keys: Buckets dropped to respect ``max_keys``.
    """

    __slots__ = ("_buckets", "_max_keys", "evicted_keys")

    def __init__(
        self,
        name: str,
        config: RateLimiterConfig | None = None,
        *,
        clock: Clock | None = None,
        events: EventHub | None = None,
    ) -> None:
        super().__init__(name, config, clock, events)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_keys = self.config.max_keys
        self.evicted_keys = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _buckets_held(self) -> list[_Bucket]:
        return list(self._buckets.values())

    def _bucket(self, key: str) -> _Bucket:
        with self._lock:
            return self._locked_bucket(key)

    def _locked_bucket(self, key: str) -> _Bucket:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self._burst, self.clock.monotonic())
            buckets[key] = bucket
            if len(buckets) > self._max_keys:
                buckets.popitem(last=False)
                self.evicted_keys += 1
        else:
            buckets.move_to_end(key)
        return bucket

    def available_permits(self, key: str) -> float:
        """Permits in ``key``'s bucket now (a full bucket for an unknown key)."""
        bucket = self._buckets.get(key)
        return self._burst if bucket is None else self._available(bucket)

    async def acquire(self, key: str, *, max_wait_s: float | None = None) -> None:
        """Take a permit for ``key``, waiting up to ``max_wait_s`` (default: the configured one)."""
        wait = self._max_wait_s if max_wait_s is None else max_wait_s
        await self._acquire(self._bucket(key), wait, key)

    def acquire_sync(self, key: str, *, max_wait_s: float | None = None) -> None:
        """Blocking variant of :meth:`acquire`."""
        wait = self._max_wait_s if max_wait_s is None else max_wait_s
        self._acquire_sync(None, wait, key)

    def try_acquire(self, key: str) -> bool:
        """Take a permit for ``key`` only if one is available now."""
        try:
            self._reserve(self._bucket(key), 0.0, key)
        except RateLimitedError:
            return False
        return True

    async def call(
        self, key: str, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Take a permit for ``key``, then await ``fn(*args, **kwargs)``."""
        await self.acquire(key)
        return await fn(*args, **kwargs)

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "kind": KIND,
            "name": self.name,
            "rate_per_s": self._rate,
            "burst": self._burst,
            "configured_rate_per_s": self.config.rate_per_s,
            "keys": len(self._buckets),
            "evicted_keys": self.evicted_keys,
            "admitted_calls": self.admitted_calls,
            "rejected_calls": self.rejected_calls,
            "waited_calls": self.waited_calls,
        }

    def reset(self) -> None:
        """Back to the configured rate and burst, forgetting every key."""
        with self._lock:
            self._rate = self.config.rate_per_s
            self._burst = self.config.capacity
            self._buckets.clear()
