from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from backbone import resilience
from backbone.errors import ConfigError
from backbone.resilience import (
    PRESET_CIRCUIT_BREAKER,
    Bulkhead,
    BulkheadConfig,
    BulkheadFullError,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    EventHub,
    FakeClock,
    Policy,
    RateLimiter,
    RateLimiterConfig,
    ResilienceConfig,
    ResilienceRegistry,
    Retry,
    RetryConfig,
    TimeLimiter,
    TimeLimiterConfig,
    TimeLimitExceededError,
)

if TYPE_CHECKING:
    from pathlib import Path


def test_public_api_is_sorted_and_complete() -> None:
    names = resilience.__all__

    def isort_key(name: str) -> tuple[int, str]:
        kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
        return (kind, name)

    assert names == sorted(names, key=isort_key)
    public = {
        name
        for name, value in vars(resilience).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("backbone.")
    }
    assert public <= set(names)
    for name in names:
        assert hasattr(resilience, name)


async def test_policy_applies_the_documented_order() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "p",
        CircuitBreakerConfig(sliding_window_size=2, minimum_calls=2, wait_in_open_s=60.0),
        clock=clock,
    )
    retry = Retry(
        "p",
        RetryConfig(max_attempts=5, jitter="none", wait_initial_s=1.0, budget_ratio=None),
        clock=clock,
    )
    policy = Policy(
        retry=retry,
        circuit_breaker=breaker,
        rate_limiter=RateLimiter("p", RateLimiterConfig(rate_per_s=1000), clock=clock),
        bulkhead=Bulkhead("p", BulkheadConfig(max_concurrent=2), clock=clock),
        time_limiter=TimeLimiter("p", TimeLimiterConfig(timeout_s=5.0), clock=clock),
    )
    calls = 0

    @policy
    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    with pytest.raises(CircuitOpenError):
        await down()
    # two attempts open the breaker; the retry's third attempt is refused by the breaker
    # and its 60 s Retry-After hint exceeds retry_after_max_s (30 s), so retrying stops
    assert calls == 2
    assert clock.slept_s == [1.0, 2.0]
    assert breaker.state.value == "OPEN"
    with pytest.raises(CircuitOpenError):
        await down()
    assert calls == 2


async def test_local_rejections_are_not_breaker_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "r", CircuitBreakerConfig(sliding_window_size=1, minimum_calls=1), clock=clock
    )
    bulkhead = Bulkhead("r", BulkheadConfig(max_concurrent=1), clock=clock)
    policy = Policy(circuit_breaker=breaker, bulkhead=bulkhead)
    gate = asyncio.Event()

    async def hold() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(policy.call(hold))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError):
        await policy.call(hold)
    assert breaker.state.value == "CLOSED"
    gate.set()
    assert await first == "done"


async def test_timeouts_count_as_breaker_failures() -> None:
    clock = FakeClock(auto_advance=False)
    breaker = CircuitBreaker(
        "t", CircuitBreakerConfig(sliding_window_size=1, minimum_calls=1), clock=clock
    )
    policy = Policy(
        circuit_breaker=breaker,
        time_limiter=TimeLimiter("t", TimeLimiterConfig(timeout_s=1.0), clock=clock),
    )

    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(policy.call(hang))
    await asyncio.sleep(0)
    clock.advance(1.0)
    with pytest.raises(TimeLimitExceededError):
        await task
    assert breaker.state.value == "OPEN"


def test_policy_on_plain_functions() -> None:
    clock = FakeClock()
    registry = ResilienceRegistry(clock=clock, rng=random.Random(0))
    policy = registry.policy(
        "plain", kinds=["retry", "circuitbreaker", "ratelimiter", "bulkhead", "timelimiter"]
    )
    attempts = 0

    @policy
    def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("again")
        return attempts

    assert flaky() == 3
    assert policy.retry is not None
    assert policy.retry.successful_with_retry == 1
    assert policy.time_limiter is not None
    policy.time_limiter.close()


def test_seed_presets() -> None:
    registry = ResilienceRegistry()
    breaker = registry.circuit_breaker("any")
    assert breaker.config == PRESET_CIRCUIT_BREAKER
    assert breaker.config.wait_in_open_s == 60.0
    for _ in range(4):
        breaker.on_exception(0.0, ConnectionError())
    assert breaker.state.value == "CLOSED"
    breaker.on_exception(0.0, ConnectionError())  # fifth failure in a row
    assert breaker.state.value == "OPEN"
    assert registry.bulkhead("any").limit == 10
    assert registry.rate_limiter("any").config.rate_per_s == 100.0
    assert registry.circuit_breaker("any") is breaker
    with pytest.raises(TypeError):
        registry.keyed_rate_limiter("any")


def test_yaml_config_merges_defaults_and_instances(tmp_path: Path) -> None:
    path = tmp_path / "resilience.yaml"
    path.write_text(
        """
resilience:
  circuit_breakers:
    defaults: {wait_in_open_s: 30}
    instances:
      github-api:
        failure_rate_threshold: 25
        record_exceptions: [builtins.ConnectionError]
  bulkheads:
    instances:
      mcp: {max_concurrent: 4, max_wait_s: 0.5}
  rate_limiters:
    instances:
      per-key: {rate_per_s: 20, burst: 40, max_wait_s: 0}
""",
        encoding="utf-8",
    )
    registry = ResilienceRegistry.from_yaml(path)
    github = registry.circuit_breaker("github-api")
    assert github.config.failure_rate_threshold == 25
    assert github.config.wait_in_open_s == 30
    assert github.config.minimum_calls == 5  # from the preset
    assert github.config.record_exceptions == (ConnectionError,)
    assert registry.circuit_breaker("other").config.wait_in_open_s == 30
    assert registry.bulkhead("mcp").limit == 4
    assert registry.keyed_rate_limiter("per-key").config.capacity == 40
    policy = registry.policy("mcp")
    assert policy.bulkhead is not None
    assert policy.retry is None


def test_invalid_yaml_config_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "circuit_breakers:\n  instances:\n    x: {failure_rate_threshold: 500}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        ResilienceConfig.from_yaml(path)
    assert "circuit_breakers" in str(info.value.variable)


def test_config_nests_in_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    class Svc(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="SVC_", env_nested_delimiter="__")
        resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)

    monkeypatch.setenv(
        "SVC_RESILIENCE__BULKHEADS", '{"defaults": {"max_wait_s": 2}, "instances": {"a": {}}}'
    )
    settings = Svc()
    assert settings.resilience.bulkheads.config_for("a").max_wait_s == 2
    assert settings.resilience.bulkheads.config_for("a").max_concurrent == 10


async def test_metrics_collector_per_registry() -> None:
    registry = ResilienceRegistry(clock=FakeClock())
    breaker = registry.circuit_breaker("db")
    retry = registry.retry("db")
    registry.bulkhead("db")
    registry.rate_limiter("db")
    registry.keyed_rate_limiter("keys")
    registry.time_limiter("db")

    async def ok() -> int:
        return 1

    await breaker.call(ok)
    await retry.call(ok)
    prom = CollectorRegistry()
    registry.bind_metrics(prom)
    registry.bind_metrics(prom)  # idempotent
    text = generate_latest(prom).decode()
    assert 'backbone_resilience_circuitbreaker_state{name="db",state="CLOSED"} 1.0' in text
    assert 'backbone_resilience_circuitbreaker_calls_total{kind="successful",name="db"} 1.0' in text
    assert "backbone_resilience_retry_calls_total" in text
    assert 'backbone_resilience_bulkhead_max_concurrent{name="db"} 10.0' in text
    assert 'backbone_resilience_ratelimiter_keys{name="keys"} 0.0' in text
    assert "backbone_resilience_timelimiter_calls_total" in text
    # a second resilience registry can bind to another prometheus registry without clashes
    other = ResilienceRegistry()
    other.circuit_breaker("db")
    other.bind_metrics(CollectorRegistry())


async def test_sink_receives_cloud_event_types_and_failures_never_break_calls() -> None:
    clock = FakeClock()
    hub = EventHub(max_queue=2)
    received: list[tuple[str, dict[str, Any]]] = []

    async def sink(event_type: str, data: dict[str, Any]) -> None:
        if data.get("to_state") == "HALF_OPEN":
            raise RuntimeError("publisher down")
        received.append((event_type, data))

    hub.attach_sink(sink)
    breaker = CircuitBreaker(
        "svc.api",
        CircuitBreakerConfig(sliding_window_size=1, minimum_calls=1, wait_in_open_s=1.0),
        clock=clock,
        events=hub,
    )

    async def boom() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        await breaker.call(boom)
    await hub.flush()
    types = [t for t, _ in received]
    assert "system.resilience.circuitbreaker.svc_api.state_transition" in types
    assert "system.resilience.circuitbreaker.svc_api.failure_rate_exceeded" in types
    assert all(not t.endswith(".error") for t in types)  # per-call outcomes stay in-process
    transition = next(d for t, d in received if t.endswith("state_transition"))
    assert transition["name"] == "svc.api"
    assert transition["to_state"] == "OPEN"
    clock.advance(1.0)
    breaker.transition_to_half_open()  # the sink raises on this one
    await hub.flush()
    assert hub.sink_failures == 1
    # a burst beyond the bounded queue is dropped and counted, never blocking the caller
    for _ in range(10):
        breaker.transition_to_forced_open()
        breaker.transition_to_closed()
    assert hub.dropped > 0
    await hub.aclose()


def test_events_without_a_loop_are_dropped_for_the_sink() -> None:
    hub = EventHub()

    async def sink(event_type: str, data: dict[str, Any]) -> None:
        raise AssertionError

    hub.attach_sink(sink)
    breaker = CircuitBreaker("sync", events=hub)
    breaker.transition_to_forced_open()
    assert hub.dropped == 1
