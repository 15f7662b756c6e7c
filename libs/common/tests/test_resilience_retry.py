from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.resilience import (
    EventHub,
    FakeClock,
    RateLimitedError,
    ResilienceEvent,
    Retry,
    RetryBudget,
    RetryBudgetExhaustedError,
    RetryConfig,
)


class Flaky:
    def __init__(self, failures: int, exc: Exception | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.exc = exc or ConnectionError("down")

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"

    def sync(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def make(clock: FakeClock, **overrides: object) -> Retry:
    cfg = RetryConfig.model_validate({"budget_ratio": None, "jitter": "none", **overrides})
    return Retry("dep", cfg, clock=clock, rng=random.Random(1))


async def test_retries_until_success_with_exponential_backoff() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=4, wait_initial_s=0.5, wait_multiplier=2.0)
    flaky = Flaky(3)
    assert await retry.call(flaky) == "ok"
    assert flaky.calls == 4
    assert clock.slept_s == [0.5, 1.0, 2.0]
    assert retry.successful_with_retry == 1
    assert retry.retries == 3


async def test_gives_up_after_max_attempts_with_last_error() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=3)
    flaky = Flaky(10)
    with pytest.raises(ConnectionError, match="down"):
        await retry.call(flaky)
    assert flaky.calls == 3
    assert retry.failed_with_retry == 1


async def test_wait_max_caps_backoff() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=6, wait_initial_s=1.0, wait_multiplier=10.0, wait_max_s=5.0)
    await retry.call(Flaky(5))
    assert clock.slept_s == [1.0, 5.0, 5.0, 5.0, 5.0]


async def test_full_jitter_stays_below_the_exponential_ceiling() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=8, jitter="full", wait_initial_s=1.0, wait_max_s=100.0)
    await retry.call(Flaky(7))
    for n, slept in enumerate(clock.slept_s, start=1):
        assert 0.0 <= slept <= 2.0 ** (n - 1)


async def test_decorrelated_jitter_bounds() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=8, jitter="decorrelated", wait_initial_s=1.0, wait_max_s=20.0)
    await retry.call(Flaky(7))
    previous = 0.0
    for slept in clock.slept_s:
        assert 1.0 <= slept <= min(20.0, max(3 * previous, 1.0))
        previous = slept


async def test_non_retryable_and_ignored_exceptions_raise_at_once() -> None:
    clock = FakeClock()
    retry = make(
        clock, retry_exceptions=(ConnectionError,), ignore_exceptions=(ConnectionResetError,)
    )
    flaky = Flaky(5, KeyError("k"))
    with pytest.raises(KeyError):
        await retry.call(flaky)
    assert flaky.calls == 1
    flaky = Flaky(5, ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        await retry.call(flaky)
    assert flaky.calls == 1
    assert retry.failed_without_retry == 2


async def test_retry_on_result_returns_last_result_when_exhausted() -> None:
    clock = FakeClock()
    results = iter([503, 503, 200])

    async def status() -> int:
        return next(results)

    retry = Retry(
        "http",
        RetryConfig(budget_ratio=None, jitter="none", max_attempts=3),
        retry_on_result=lambda s: s >= 500,
        clock=clock,
    )
    assert await retry.call(status) == 200
    results = iter([503, 503, 503])
    assert await retry.call(status) == 503


async def test_honours_retry_after_hint_and_gives_up_on_too_long_hints() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=3, wait_initial_s=0.1, retry_after_max_s=10.0)
    flaky = Flaky(1, RateLimitedError("api", retry_after_s=2.5))
    assert await retry.call(flaky) == "ok"
    assert clock.slept_s == [2.5]
    flaky = Flaky(1, RateLimitedError("api", retry_after_s=60.0))
    with pytest.raises(RateLimitedError):
        await retry.call(flaky)
    assert flaky.calls == 1


async def test_total_timeout_stops_retries_that_would_cross_it() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=10, wait_initial_s=1.0, wait_multiplier=2.0, timeout_s=8.0)
    flaky = Flaky(100)
    with pytest.raises(ConnectionError):
        await retry.call(flaky)
    # waits 1 + 2 + 4 = 7; the next wait (8) would end at 15 > 8
    assert clock.slept_s == [1.0, 2.0, 4.0]
    assert flaky.calls == 4


async def test_budget_refuses_retries_beyond_its_share() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_retries_per_s=0.0, max_tokens=100.0, clock=clock)
    events: list[ResilienceEvent] = []
    hub = EventHub()
    hub.add_listener(events.append)
    retry = Retry(
        "dep",
        RetryConfig(jitter="none", wait_initial_s=0.0, max_attempts=3),
        budget=budget,
        clock=clock,
        events=hub,
    )
    for _ in range(14):
        assert await retry.call(Flaky(0)) == "ok"
    # 15 calls x 0.1 = 1.5 tokens: one retry, then the budget refuses
    flaky = Flaky(100)
    with pytest.raises(RetryBudgetExhaustedError) as info:
        await retry.call(flaky)
    assert flaky.calls == 2
    assert isinstance(info.value.__cause__, ConnectionError)
    assert info.value.attempts == 2
    flaky = Flaky(100)
    with pytest.raises(RetryBudgetExhaustedError):
        await retry.call(flaky)
    assert flaky.calls == 1
    assert retry.budget_exhausted == 2
    assert any(e.event == "budget_exhausted" for e in events)


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.1, 0.5, 2.0])), min_size=1, max_size=60
    ),
    ratio=st.sampled_from([0.05, 0.2, 0.5]),
    min_rate=st.sampled_from([0.0, 1.0, 5.0]),
)
async def test_budget_never_allows_more_retries_than_configured(
    plan: list[tuple[int, float]], ratio: float, min_rate: float
) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_retries_per_s=min_rate, max_tokens=10.0, clock=clock)
    retry = Retry(
        "b",
        RetryConfig(max_attempts=5, jitter="none", wait_initial_s=0.0),
        budget=budget,
        clock=clock,
    )
    calls = 0
    for failures, gap_s in plan:
        clock.advance(gap_s)
        calls += 1
        with contextlib.suppress(ConnectionError, RetryBudgetExhaustedError):
            await retry.call(Flaky(failures))
    bound = budget.initial_tokens + ratio * calls + min_rate * clock.monotonic()
    assert retry.retries <= bound + 1e-9
    assert budget.withdrawals == retry.retries


async def test_adaptive_retry_slows_down_and_thins_out_when_success_rate_drops() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=20.0, min_retries_per_s=0.0, max_tokens=1000.0, clock=clock)
    retry = Retry(
        "a",
        RetryConfig(
            jitter="none",
            wait_initial_s=1.0,
            max_attempts=2,
            adaptive=True,
            adaptive_delay_factor=3.0,
            adaptive_window=10,
        ),
        budget=budget,
        clock=clock,
    )
    tokens_before = budget.tokens
    await retry.call(Flaky(1))
    assert clock.slept_s[-1] == pytest.approx(1.0)  # too little history: treated as healthy
    assert tokens_before + 20.0 - budget.tokens == pytest.approx(1.0)
    for _ in range(6):
        with pytest.raises(ConnectionError):
            await retry.call(Flaky(5))
    assert retry.success_rate == 0.0
    tokens_before = budget.tokens
    with pytest.raises(ConnectionError):
        await retry.call(Flaky(5))
    assert clock.slept_s[-1] == pytest.approx(4.0)  # 1 x (1 + (1 - 0) x 3)
    assert tokens_before + 20.0 - budget.tokens == pytest.approx(10.0)  # cost 1 / max(0, 0.1)


def test_plain_function_retry_uses_sync_sleep() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=3)
    flaky = Flaky(2)

    @retry
    def work() -> str:
        return flaky.sync()

    assert work() == "ok"
    assert clock.slept_s == [0.5, 1.0]


async def test_decorator_keeps_metadata_and_default_config_has_budget() -> None:
    retry = Retry("d", clock=FakeClock())
    assert retry.budget is not None

    @retry
    async def job(x: int) -> int:
        """Doc."""
        return x

    assert await job(3) == 3
    assert job.__doc__ == "Doc."
    assert retry.metrics()["successful_without_retry"] == 1


async def test_attempts_retry_a_block() -> None:
    clock = FakeClock()
    retry = make(clock, max_attempts=4)
    flaky = Flaky(2)
    seen = []
    async for attempt in retry.attempts():
        with attempt:
            seen.append(attempt.number)
            result = await flaky()
    assert result == "ok"
    assert seen == [1, 2, 3]
    assert clock.slept_s == [0.5, 1.0]
    assert retry.successful_with_retry == 1

    flaky = Flaky(10)

    async def run_block() -> None:
        async for attempt in retry.attempts():
            with attempt:
                await flaky()

    with pytest.raises(ConnectionError):
        await run_block()
    assert flaky.calls == 4
