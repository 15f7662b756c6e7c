from __future__ import annotations

import asyncio
import math

import pytest

from backbone.errors import BackboneError, ResilienceError
from backbone.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    EventHub,
    FakeClock,
    ResilienceEvent,
)


def make(clock: FakeClock | None = None, **overrides: object) -> CircuitBreaker:
    cfg = {
        "sliding_window_size": 4,
        "minimum_calls": 4,
        "failure_rate_threshold": 50.0,
        "wait_in_open_s": 10.0,
        "permitted_calls_in_half_open": 2,
        **overrides,
    }
    return CircuitBreaker(
        "dep", CircuitBreakerConfig.model_validate(cfg), clock=clock or FakeClock()
    )


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise ValueError("boom")


async def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ValueError, match="boom"):
            await breaker.call(boom)


def test_defaults_follow_resilience4j() -> None:
    cfg = CircuitBreakerConfig()
    assert cfg.failure_rate_threshold == 50
    assert cfg.slow_call_rate_threshold == 100
    assert cfg.slow_call_duration_s == 60
    assert cfg.sliding_window_size == 100
    assert cfg.minimum_calls == 100
    assert cfg.permitted_calls_in_half_open == 10
    assert cfg.wait_in_open_s == 60
    assert cfg.sliding_window_type == "count_based"
    assert not cfg.automatic_transition_to_half_open


async def test_failure_rate_equal_to_threshold_opens_after_minimum_calls() -> None:
    breaker = make()
    await breaker.call(ok)
    await breaker.call(ok)
    await fail_times(breaker, 1)
    assert breaker.state.value == "CLOSED"  # 3 calls < minimum 4
    await fail_times(breaker, 1)  # 2/4 = 50 % >= 50 %
    assert breaker.state.value == "OPEN"


async def test_open_breaker_rejects_until_wait_elapsed_then_half_open_closes() -> None:
    clock = FakeClock()
    breaker = make(clock)
    await fail_times(breaker, 4)
    clock.advance(4.0)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    err = info.value
    assert isinstance(err, ResilienceError)
    assert isinstance(err, BackboneError)
    assert err.name == "dep"
    assert err.remaining_wait_s == pytest.approx(6.0)
    assert err.retry_after_s == pytest.approx(6.0)
    clock.advance(6.0)
    assert await breaker.call(ok) == "ok"
    assert breaker.state.value == "HALF_OPEN"
    assert await breaker.call(ok) == "ok"
    assert breaker.state.value == "CLOSED"


async def test_half_open_quota_refuses_extra_concurrent_trials() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.transition_to_half_open()
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.state == "HALF_OPEN"
    assert info.value.remaining_wait_s == 0.0
    # an ignored outcome gives its permit back
    breaker.on_exception(0.0, asyncio.CancelledError())
    assert breaker.try_acquire()


async def test_failed_trial_reopens_with_exponential_wait() -> None:
    clock = FakeClock()
    breaker = make(clock, wait_in_open_multiplier=2.0, wait_in_open_max_s=25.0)
    await fail_times(breaker, 4)
    waits = []
    for _ in range(4):
        waits.append(breaker.remaining_wait_s)
        clock.advance(breaker.remaining_wait_s)
        await fail_times(breaker, 2)
        assert breaker.state.value == "OPEN"
    assert waits == [10.0, 20.0, 25.0, 25.0]


async def test_slow_calls_open_the_breaker() -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_duration_s=1.0, slow_call_rate_threshold=75.0)

    async def slow() -> str:
        await clock.sleep(1.5)
        return "slow"

    for _ in range(3):
        await breaker.call(slow)
    await breaker.call(ok)
    assert breaker.state.value == "OPEN"
    assert breaker.slow_calls == 3


async def test_exceptions_classified_as_record_ignore_or_success() -> None:
    breaker = make(
        record_exceptions=(ValueError,),
        ignore_exceptions=(KeyError,),
        minimum_calls=1,
        sliding_window_size=1,
    )
    with pytest.raises(KeyError):
        await breaker.call(_raise, KeyError("k"))
    with pytest.raises(RuntimeError):
        await breaker.call(_raise, RuntimeError("r"))
    assert breaker.state.value == "CLOSED"
    assert breaker.ignored_calls == 1
    assert breaker.successful_calls == 1
    with pytest.raises(ValueError, match="v"):
        await breaker.call(_raise, ValueError("v"))
    assert breaker.state.value == "OPEN"


async def _raise(exc: BaseException) -> None:
    raise exc


async def test_results_can_count_as_failures() -> None:
    breaker = CircuitBreaker(
        "http",
        CircuitBreakerConfig(sliding_window_size=2, minimum_calls=2),
        record_result=lambda status: status >= 500,
        clock=FakeClock(),
    )

    async def status(code: int) -> int:
        return code

    assert await breaker.call(status, 200) == 200
    assert await breaker.call(status, 503) == 503
    assert breaker.state.value == "OPEN"


async def test_time_based_window_forgets_old_calls() -> None:
    clock = FakeClock()
    breaker = make(clock, sliding_window_type="time_based", sliding_window_size=10, minimum_calls=3)
    await fail_times(breaker, 2)
    clock.advance(10.0)
    await breaker.call(ok)
    await breaker.call(ok)
    await fail_times(breaker, 1)
    # the two early failures fell out: 1/3 < 50 %
    assert breaker.state.value == "CLOSED"
    await fail_times(breaker, 1)
    assert breaker.state.value == "OPEN"


async def test_special_states() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.transition_to_forced_open()
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert math.isinf(info.value.remaining_wait_s)
    breaker.transition_to_disabled()
    await fail_times(breaker, 10)
    assert breaker.state.value == "DISABLED"
    breaker.transition_to_metrics_only()
    await fail_times(breaker, 10)
    assert breaker.state.value == "METRICS_ONLY"
    assert breaker.metrics()["failure_rate"] == 100.0
    breaker.reset()
    after = breaker.metrics()
    assert after["state"] == "CLOSED"
    assert after["buffered_calls"] == 0


async def test_automatic_transition_to_half_open_fires_on_the_clock() -> None:
    clock = FakeClock()
    events: list[ResilienceEvent] = []
    hub = EventHub()
    hub.add_listener(events.append)
    breaker = CircuitBreaker(
        "auto",
        CircuitBreakerConfig(
            sliding_window_size=1,
            minimum_calls=1,
            wait_in_open_s=5.0,
            automatic_transition_to_half_open=True,
        ),
        clock=clock,
        events=hub,
    )
    await fail_times(breaker, 1)
    clock.advance(5.0)
    transitions = [
        (e.data["from_state"], e.data["to_state"]) for e in events if e.event == "state_transition"
    ]
    assert transitions == [("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN")]
    assert events[-1].type == "system.resilience.circuitbreaker.auto.state_transition"
    kinds = {e.event for e in events}
    assert {"error", "failure_rate_exceeded", "state_transition"} <= kinds


async def test_metrics_only_emits_threshold_event_once() -> None:
    hub = EventHub()
    seen: list[str] = []
    hub.add_listener(lambda e: seen.append(e.event))
    breaker = CircuitBreaker(
        "m", CircuitBreakerConfig(sliding_window_size=1, minimum_calls=1), events=hub
    )
    breaker.transition_to_metrics_only()
    await fail_times(breaker, 3)
    assert seen.count("failure_rate_exceeded") == 1


async def test_not_permitted_event_and_counter() -> None:
    hub = EventHub()
    seen: list[ResilienceEvent] = []
    hub.add_listener(seen.append)
    breaker = CircuitBreaker("n", events=hub)
    breaker.transition_to_forced_open()
    for _ in range(3):
        assert not breaker.try_acquire()
    assert breaker.not_permitted_calls == 3
    assert [e.event for e in seen].count("call_not_permitted") == 3


def test_decorates_plain_functions_and_guard_blocks() -> None:
    clock = FakeClock()
    breaker = make(clock, sliding_window_size=2, minimum_calls=2)

    @breaker
    def divide(a: int, b: int) -> float:
        return a / b

    assert divide(6, 3) == 2
    assert divide.__name__ == "divide"
    with pytest.raises(ZeroDivisionError):
        divide(1, 0)
    assert breaker.state.value == "OPEN"
    breaker.reset()
    with pytest.raises(ZeroDivisionError), breaker.guard():
        _ = 1 / 0
    assert breaker.failed_calls == 2


async def test_async_decorator_and_guard() -> None:
    breaker = make(sliding_window_size=2, minimum_calls=2)

    @breaker
    async def double(x: int) -> int:
        return 2 * x

    assert await double(21) == 42
    async with breaker.guard():
        pass
    assert breaker.successful_calls == 2
    with pytest.raises(ValueError, match="x"):
        async with breaker.guard():
            raise ValueError("x")


async def test_cancelled_call_is_not_recorded() -> None:
    breaker = make(sliding_window_size=1, minimum_calls=1)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state.value == "CLOSED"
    assert breaker.ignored_calls == 1


def test_exceptions_from_config_by_dotted_name() -> None:
    cfg = CircuitBreakerConfig.model_validate(
        {"record_exceptions": ["builtins.ConnectionError", "TimeoutError"]}
    )
    assert cfg.record_exceptions == (ConnectionError, TimeoutError)
    assert cfg.model_dump(mode="json")["record_exceptions"] == [
        "builtins.ConnectionError",
        "builtins.TimeoutError",
    ]
    with pytest.raises(ValueError, match="not an exception"):
        CircuitBreakerConfig.model_validate({"record_exceptions": ["builtins.len"]})


async def test_listener_failure_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    hub = EventHub()

    def bad(_: ResilienceEvent) -> None:
        raise RuntimeError("listener bug")

    hub.add_listener(bad)
    breaker = CircuitBreaker("l", events=hub)
    assert await breaker.call(ok) == "ok"
    assert "listener failed" in caplog.text
