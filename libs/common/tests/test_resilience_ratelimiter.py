from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.errors import ConfigError
from backbone.resilience import (
    FakeClock,
    KeyedRateLimiter,
    RateLimitedError,
    RateLimiter,
    RateLimiterConfig,
)


def assert_bucket_bound(times: list[float], rate: float, burst: float) -> None:
    # Any window [t_i, t_j] holding admissions i..j must satisfy count <= rate * t + burst;
    # checking every pair of admissions covers every window.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            count = j - i + 1
            assert count <= rate * (times[j] - start) + burst + 1e-6, (i, j, times[i : j + 1])


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(
        st.one_of(st.just(0.0), st.floats(0.0, 0.5), st.sampled_from([0.01, 1.0, 5.0])),
        min_size=1,
        max_size=120,
    ),
    rate=st.sampled_from([1.0, 5.0, 10.0, 100.0]),
    burst=st.sampled_from([1.0, 3.0, 10.0]),
    max_wait_s=st.sampled_from([0.0, 0.1, 1.0]),
)
async def test_never_admits_more_than_rate_times_t_plus_burst(
    gaps: list[float], rate: float, burst: float, max_wait_s: float
) -> None:
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(
        "r", RateLimiterConfig(rate_per_s=rate, burst=burst, max_wait_s=max_wait_s), clock=clock
    )
    admitted: list[float] = []
    hints: list[float] = []

    async def caller() -> None:
        try:
            await limiter.acquire()
        except RateLimitedError as exc:
            hints.append(exc.retry_after_s)
            return
        admitted.append(clock.monotonic())

    tasks = []
    for gap in gaps:
        await clock.run_for(gap)
        tasks.append(asyncio.create_task(caller()))
        await asyncio.sleep(0)
    await clock.run_for(10_000.0)  # release every reserved waiter, each at its time
    await asyncio.gather(*tasks)
    admitted.sort()
    assert len(admitted) + limiter.rejected_calls == len(gaps)
    assert_bucket_bound(admitted, rate, burst)
    assert all(hint > 0 for hint in hints)


async def test_a_full_bucket_admits_exactly_burst_at_once() -> None:
    clock = FakeClock()
    limiter = RateLimiter("b", RateLimiterConfig(rate_per_s=2, burst=3, max_wait_s=0), clock=clock)
    clock.advance(3600.0)
    assert [limiter.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    clock.advance(0.5)
    assert [limiter.try_acquire() for _ in range(2)] == [True, False]


async def test_waits_for_a_permit_within_max_wait_else_rejects() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        "w", RateLimiterConfig(rate_per_s=10, burst=2, max_wait_s=0.15), clock=clock
    )
    await limiter.acquire()
    await limiter.acquire()
    await limiter.acquire()  # waits 0.1 s for the refill
    assert clock.slept_s == [pytest.approx(0.1)]
    assert limiter.waited_calls == 1
    limiter2 = RateLimiter(
        "x", RateLimiterConfig(rate_per_s=1, burst=1, max_wait_s=0.5), clock=clock
    )
    await limiter2.acquire()
    with pytest.raises(RateLimitedError) as info:
        await limiter2.acquire()
    assert info.value.retry_after_s == pytest.approx(1.0)
    assert limiter2.try_acquire() is False
    clock.advance(1.0)
    assert limiter2.try_acquire() is True


async def test_context_manager_decorator_and_plain_function() -> None:
    clock = FakeClock()
    limiter = RateLimiter("c", RateLimiterConfig(rate_per_s=1, burst=1, max_wait_s=5), clock=clock)

    async with limiter:
        pass

    @limiter
    def plain() -> int:
        return 1

    assert plain() == 1  # waited 1 s on the fake clock
    assert clock.monotonic() == pytest.approx(1.0)
    with limiter:
        pass
    assert limiter.admitted_calls == 3
    assert RateLimiterConfig(rate_per_s=0.5).capacity == 1.0


async def test_cancelled_waiter_returns_its_reserved_permit() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter("z", RateLimiterConfig(rate_per_s=1, burst=1, max_wait_s=10), clock=clock)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.available_permits == pytest.approx(-1.0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.available_permits == pytest.approx(0.0)


async def test_keyed_limiter_isolates_keys_and_bounds_memory() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(
        "per-key", RateLimiterConfig(rate_per_s=1, burst=2, max_wait_s=0, max_keys=100), clock=clock
    )
    assert limiter.try_acquire("a")
    assert limiter.try_acquire("a")
    assert not limiter.try_acquire("a")
    assert limiter.try_acquire("b")
    with pytest.raises(RateLimitedError) as info:
        await limiter.acquire("a")
    assert info.value.key == "a"
    for i in range(1000):
        limiter.try_acquire(f"k{i}")
    assert len(limiter) == 100
    assert limiter.evicted_keys == 902
    assert limiter.metrics()["keys"] == 100


async def test_set_rate_credits_the_past_at_the_old_rate_and_restore_puts_config_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        "t", RateLimiterConfig(rate_per_s=10, burst=10, max_wait_s=0), clock=clock
    )
    events: list[tuple[str, dict[str, object]]] = []
    limiter.events.add_listener(lambda e: events.append((e.event, dict(e.data))))
    assert sum(limiter.try_acquire() for _ in range(20)) == 10  # bucket drained
    clock.advance(0.3)  # 3 permits earned at 10/s before the change
    limiter.set_rate(1.0)  # burst follows: 10 * 1/10 = 1
    assert (limiter.rate_per_s, limiter.burst, limiter.rate_changed) == (1.0, 1.0, True)
    # The 3 earned permits do not fit the new bucket of 1: one is left, not 3, not 0.
    assert [limiter.try_acquire() for _ in range(2)] == [True, False]
    clock.advance(0.5)
    assert limiter.try_acquire() is False  # at 1/s half a second earns half a permit
    clock.advance(0.5)
    assert limiter.try_acquire() is True
    clock.advance(100.0)
    assert sum(limiter.try_acquire() for _ in range(5)) == 1  # the burst is 1 now
    metrics = limiter.metrics()
    assert (metrics["rate_per_s"], metrics["configured_rate_per_s"]) == (1.0, 10.0)

    limiter.restore_rate()
    assert (limiter.rate_per_s, limiter.burst, limiter.rate_changed) == (10.0, 10.0, False)
    clock.advance(1.0)
    assert sum(limiter.try_acquire() for _ in range(20)) == 10
    limiter.set_rate(2.0, burst=4.0)
    assert limiter.burst == 4.0
    limiter.reset()  # reset also means: as configured
    assert (limiter.rate_per_s, limiter.burst) == (10.0, 10.0)
    changes = [(name, data) for name, data in events if name.startswith("rate_")]
    assert [name for name, _ in changes] == ["rate_changed", "rate_restored", "rate_changed"]
    assert changes[0][1] == {"rate_per_s": 1.0, "burst": 1.0, "previous_rate_per_s": 10.0}


async def test_set_rate_keeps_the_bucket_bound_at_each_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter("b", RateLimiterConfig(rate_per_s=100, max_wait_s=0), clock=clock)
    clock.advance(10.0)
    limiter.set_rate(5.0)  # no burst configured: one second's worth
    admitted: list[float] = []
    for _ in range(400):
        if limiter.try_acquire():
            admitted.append(clock.monotonic())
        clock.advance(0.01)
    assert_bucket_bound(admitted, 5.0, 5.0)
    assert len(admitted) == pytest.approx(5 + 5 * 4.0, abs=1)


async def test_set_rate_applies_to_every_key_and_validates() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(
        "per-key", RateLimiterConfig(rate_per_s=100, burst=50, max_wait_s=0), clock=clock
    )
    assert limiter.try_acquire("a")
    limiter.set_rate(10.0)
    assert limiter.burst == 5.0  # the configured burst, scaled like the rate
    assert sum(limiter.try_acquire("a") for _ in range(50)) == 5  # an existing key
    assert sum(limiter.try_acquire("new") for _ in range(50)) == 5  # and a new one
    assert limiter.available_permits("never-seen") == 5.0
    limiter.restore_rate()
    clock.advance(1.0)
    assert sum(limiter.try_acquire("a") for _ in range(100)) == 50
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            limiter.set_rate(bad)
    with pytest.raises(ConfigError):
        limiter.set_rate(1.0, burst=0.5)


def test_set_rate_is_thread_safe() -> None:
    # Many threads take permits while another keeps changing the rate: the counters stay exact
    # and the limiter never admits more than the largest rate's bound.
    limiter = RateLimiter("threads", RateLimiterConfig(rate_per_s=1e6, burst=1000, max_wait_s=0))
    stop = threading.Event()
    taken = [0] * 4

    def take(i: int) -> None:
        while not stop.is_set():
            taken[i] += limiter.try_acquire()

    workers = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    try:
        for i in range(300):
            limiter.set_rate(1e6 if i % 2 else 10.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert sum(taken) == limiter.admitted_calls
    limiter.restore_rate()
    assert limiter.rate_per_s == 1e6
