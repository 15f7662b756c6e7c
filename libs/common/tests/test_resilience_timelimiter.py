from __future__ import annotations

import asyncio
import threading

import pytest

from backbone.resilience import (
    FakeClock,
    TimeLimiter,
    TimeLimiterConfig,
    TimeLimitExceededError,
)


async def test_overrunning_call_is_cancelled_and_raises_timeout() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = TimeLimiter("t", TimeLimiterConfig(timeout_s=2.0), clock=clock)
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(limiter.call(hang))
    await asyncio.sleep(0)
    clock.advance(1.9)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.1)
    with pytest.raises(TimeLimitExceededError) as info:
        await task
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout_s == 2.0
    assert cancelled.is_set()
    assert limiter.timed_out_calls == 1


async def test_fast_call_passes_and_timer_is_cancelled() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = TimeLimiter("t", TimeLimiterConfig(timeout_s=2.0), clock=clock)

    @limiter
    async def quick(x: int) -> int:
        return x + 1

    assert await quick(1) == 2
    clock.advance(5.0)  # the cancelled timer must not cancel anything later
    await asyncio.sleep(0)
    assert limiter.successful_calls == 1
    assert limiter.timed_out_calls == 0


async def test_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = TimeLimiter("t", TimeLimiterConfig(timeout_s=2.0), clock=clock)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(limiter.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.timed_out_calls == 0


async def test_deadline_context_manager_on_the_real_clock() -> None:
    limiter = TimeLimiter("real", TimeLimiterConfig(timeout_s=0.01))
    with pytest.raises(TimeLimitExceededError):
        async with limiter.deadline():
            await asyncio.Event().wait()
    async with limiter.deadline():
        await asyncio.sleep(0)
    assert limiter.metrics()["timed_out_calls"] == 1


async def test_detached_mode_leaves_the_call_running() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = TimeLimiter("d", TimeLimiterConfig(timeout_s=1.0, cancel_running=False), clock=clock)
    gate = asyncio.Event()
    done = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        done.set()
        return "late"

    task = asyncio.create_task(limiter.call(slow))
    await asyncio.sleep(0)
    clock.advance(1.0)
    with pytest.raises(TimeLimitExceededError):
        await task
    gate.set()
    await done.wait()  # the inner call finished in the background


def test_plain_function_runs_in_a_worker_thread_with_a_deadline() -> None:
    limiter = TimeLimiter("sync", TimeLimiterConfig(timeout_s=0.05))
    release = threading.Event()

    @limiter
    def blocked() -> None:
        release.wait(5)

    @limiter
    def quick() -> int:
        return 7

    try:
        assert quick() == 7
        with pytest.raises(TimeLimitExceededError):
            blocked()
    finally:
        release.set()
        limiter.close()
