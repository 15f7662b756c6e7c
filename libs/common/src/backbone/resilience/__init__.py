"""Resilience patterns with Resilience4j's semantics: async first, observable, remote control.

Public API::

    from backbone.resilience import (
        CircuitBreaker, CircuitBreakerConfig, Retry, RetryConfig, Bulkhead, BulkheadConfig,
        RateLimiter, KeyedRateLimiter, RateLimiterConfig, TimeLimiter, TimeLimiterConfig,
        Policy, ResilienceRegistry, ResilienceControl,
    )

    registry = ResilienceRegistry.from_yaml("resilience.yaml")   # presets when not configured
    github = registry.policy("github-api")     # retry(breaker(limiter(bulkhead(timeout(call)))))

    @github
    async def fetch(url: str) -> bytes: ...

    registry.bind_metrics()                    # prometheus collector, read at scrape time
    registry.attach_sink(publish_event)        # CloudEvents system.resilience.<kind>.<name>.<event>
    await ResilienceControl(registry, nc, service="gateway").start()  # remote control

Each pattern is also usable alone: as a decorator (on coroutine functions and plain functions),
with ``call`` / ``call_sync``, or as a context manager (``breaker.guard()``,
``bulkhead.guard()``, ``async with limiter``, ``time_limiter.deadline()``,
``async for attempt in retry.attempts(): with attempt: ...``). Every pattern takes a
:class:`Clock`; tests use :class:`FakeClock`, whose ``sleep`` advances time instead of waiting.

Semantics and deliberate deviations from Resilience4j are documented on each class's module.
"""

from backbone.resilience._backoff import Backoff
from backbone.resilience._breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from backbone.resilience._bulkhead import Bulkhead, BulkheadConfig
from backbone.resilience._clock import Clock, FakeClock, SystemClock, TimerHandle
from backbone.resilience._compose import Policy
from backbone.resilience._control import (
    CONTROL_OPS,
    ResilienceControl,
    control_subject,
    request_all,
)
from backbone.resilience._errors import (
    BulkheadFullError,
    CircuitOpenError,
    RateLimitedError,
    ResilienceError,
    RetryBudgetExhaustedError,
    TimeLimitExceededError,
)
from backbone.resilience._events import (
    EVENT_TYPE_PREFIX,
    EventHub,
    EventListener,
    EventSink,
    ResilienceEvent,
    event_type,
)
from backbone.resilience._metrics import ResilienceCollector
from backbone.resilience._ratelimiter import KeyedRateLimiter, RateLimiter, RateLimiterConfig
from backbone.resilience._registry import (
    PRESET_BULKHEAD,
    PRESET_CIRCUIT_BREAKER,
    PRESET_RATE_LIMITER,
    PRESET_RETRY,
    PRESET_TIME_LIMITER,
    ResilienceConfig,
    ResilienceRegistry,
    load_resilience_config,
)
from backbone.resilience._retry import (
    Attempt,
    Retry,
    RetryBudget,
    RetryConfig,
    default_retry_after,
)
from backbone.resilience._timelimiter import TimeLimiter, TimeLimiterConfig

__all__ = [
    "CONTROL_OPS",
    "EVENT_TYPE_PREFIX",
    "PRESET_BULKHEAD",
    "PRESET_CIRCUIT_BREAKER",
    "PRESET_RATE_LIMITER",
    "PRESET_RETRY",
    "PRESET_TIME_LIMITER",
    "Attempt",
    "Backoff",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "EventHub",
    "EventListener",
    "EventSink",
    "FakeClock",
    "KeyedRateLimiter",
    "Policy",
    "RateLimitedError",
    "RateLimiter",
    "RateLimiterConfig",
    "ResilienceCollector",
    "ResilienceConfig",
    "ResilienceControl",
    "ResilienceError",
    "ResilienceEvent",
    "ResilienceRegistry",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "RetryConfig",
    "SystemClock",
    "TimeLimitExceededError",
    "TimeLimiter",
    "TimeLimiterConfig",
    "TimerHandle",
    "control_subject",
    "default_retry_after",
    "event_type",
    "load_resilience_config",
    "request_all",
]
