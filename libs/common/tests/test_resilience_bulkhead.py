from __future__ import annotations

import asyncio
import threading
from typing import Literal

import pytest

from backbone.resilience import (
    Bulkhead,
    BulkheadConfig,
    BulkheadFullError,
    EventHub,
    FakeClock,
    ResilienceEvent,
)


async def test_thousand_concurrent_callers_never_exceed_the_limit() -> None:
    bulkhead = Bulkhead("db", BulkheadConfig(max_concurrent=7, max_wait_s=3600.0))
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1

    await asyncio.gather(*(bulkhead.call(work) for _ in range(1000)))
    assert peak == 7
    assert bulkhead.max_inflight_seen == 7
    assert bulkhead.finished_calls == 1000
    assert bulkhead.inflight == 0
    assert bulkhead.rejected_calls == 0


async def test_adaptive_limits_never_exceeded_under_a_thousand_callers() -> None:
    clock = FakeClock()
    modes: tuple[Literal["aimd"], Literal["gradient"]] = ("aimd", "gradient")
    for mode in modes:
        bulkhead = Bulkhead(
            mode,
            BulkheadConfig(
                max_concurrent=20,
                max_wait_s=3600.0,
                adaptive=mode,
                latency_threshold_s=0.5,
                min_concurrent=2,
            ),
            clock=clock,
        )

        async def work(i: int) -> None:
            await asyncio.sleep(0)
            if i % 3 == 0:
                clock.advance(1.0)  # slow calls push the limit down

        limits: list[int] = []

        def on_event(event: ResilienceEvent, limits: list[int] = limits) -> None:
            limits.append(event.data["to_limit"])

        bulkhead.events.add_listener(on_event)
        await asyncio.gather(*(bulkhead.call(work, i) for i in range(1000)))
        # admission only happens below the limit in force, which never exceeded these values
        assert bulkhead.max_inflight_seen <= max([20, *limits])
        assert limits, "the adaptive limit never moved"
        assert bulkhead.finished_calls == 1000
        assert bulkhead.inflight == 0


async def test_full_bulkhead_rejects_at_once_by_default() -> None:
    hub = EventHub()
    seen: list[ResilienceEvent] = []
    hub.add_listener(seen.append)
    bulkhead = Bulkhead("b", BulkheadConfig(max_concurrent=1), events=hub)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    task = asyncio.create_task(bulkhead.call(hold))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError) as info:
        await bulkhead.call(hold)
    assert info.value.name == "b"
    assert info.value.max_concurrent == 1
    assert seen[-1].event == "call_rejected"
    gate.set()
    await task
    assert bulkhead.available == 1


async def test_waiter_times_out_on_the_clock_and_fifo_handoff() -> None:
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead("w", BulkheadConfig(max_concurrent=1, max_wait_s=2.0), clock=clock)
    order: list[int] = []
    gate = asyncio.Event()

    async def hold(i: int) -> None:
        order.append(i)
        await gate.wait()

    first = asyncio.create_task(bulkhead.call(hold, 0))
    await asyncio.sleep(0)
    second = asyncio.create_task(bulkhead.call(hold, 1))
    third = asyncio.create_task(bulkhead.call(hold, 2))
    await asyncio.sleep(0)
    clock.advance(1.0)
    gate.set()
    await first
    await second
    await third
    assert order == [0, 1, 2]

    gate.clear()
    blocker = asyncio.create_task(bulkhead.call(hold, 3))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(bulkhead.call(hold, 4))
    await asyncio.sleep(0)
    clock.advance(2.0)
    with pytest.raises(BulkheadFullError):
        await waiter
    gate.set()
    await blocker
    assert bulkhead.inflight == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    bulkhead = Bulkhead("c", BulkheadConfig(max_concurrent=1, max_wait_s=60.0))
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    holder = asyncio.create_task(bulkhead.call(hold))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(bulkhead.call(hold))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    await holder
    assert bulkhead.inflight == 0
    assert bulkhead.available == 1


async def test_aimd_shrinks_on_slow_calls_and_grows_when_used() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(
        "a",
        BulkheadConfig(max_concurrent=10, adaptive="aimd", latency_threshold_s=1.0),
        clock=clock,
    )

    async def slow() -> None:
        await clock.sleep(2.0)

    for _ in range(5):
        await bulkhead.call(slow)
    assert bulkhead.limit == 5  # 10 x 0.9^5 = 5.9
    bulkhead.reset()
    assert bulkhead.limit == 10


async def test_gradient_limit_drops_when_latency_rises() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead("g", BulkheadConfig(max_concurrent=50, adaptive="gradient"), clock=clock)
    for latency in [0.01] * 50 + [0.5] * 30:
        async with bulkhead.guard():
            await clock.sleep(latency)
    assert bulkhead.limit < 50


def test_plain_functions_from_threads_respect_the_limit() -> None:
    bulkhead = Bulkhead("t", BulkheadConfig(max_concurrent=3, max_wait_s=30.0))
    lock = threading.Lock()
    running = 0
    peak = 0
    barrier = threading.Barrier(8)

    @bulkhead
    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        with lock:
            running -= 1

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            work()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 3
    assert bulkhead.finished_calls == 400
    with bulkhead.guard():
        assert bulkhead.inflight == 1
