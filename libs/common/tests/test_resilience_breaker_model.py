"""The breaker against a small reference model of Resilience4j's documented semantics.

The model is deliberately naive (plain lists, recomputed rates, an explicit loop over due
transitions) so that it reads like the documentation; hypothesis drives both with random call
outcomes, call durations, clock moves and operator actions, and checks they always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from backbone.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    FakeClock,
)

SLOW_S = 1.0


@dataclass
class Model:
    cfg: CircuitBreakerConfig
    now: float = 0.0
    state: str = "CLOSED"
    records: list[tuple[float, bool, bool]] = field(default_factory=list)
    attempts: int = 0
    open_until: float = 0.0
    half_open_deadline: float = math.inf
    permits: int = 0

    # -- window ----------------------------------------------------------------------------
    def _window(self) -> list[tuple[float, bool, bool]]:
        if self.state == "HALF_OPEN":
            return self.records[-self.cfg.permitted_calls_in_half_open :]
        if self.cfg.sliding_window_type == "count_based":
            return self.records[-self.cfg.sliding_window_size :]
        oldest = math.floor(self.now) - self.cfg.sliding_window_size
        return [r for r in self.records if math.floor(r[0]) > oldest]

    def _minimum(self) -> int:
        if self.state == "HALF_OPEN":
            return min(self.cfg.minimum_calls, self.cfg.permitted_calls_in_half_open)
        if self.cfg.sliding_window_type == "count_based":
            return min(self.cfg.minimum_calls, self.cfg.sliding_window_size)
        return self.cfg.minimum_calls

    def _exceeded(self) -> bool | None:
        window = self._window()
        if not window or len(window) < self._minimum():
            return None
        failure_rate = 100.0 * sum(1 for r in window if r[1]) / len(window)
        slow_rate = 100.0 * sum(1 for r in window if r[2]) / len(window)
        return (
            failure_rate >= self.cfg.failure_rate_threshold
            or slow_rate >= self.cfg.slow_call_rate_threshold
        )

    # -- transitions -----------------------------------------------------------------------
    def go(self, state: str) -> None:
        if state == "OPEN":
            self.attempts += 1
            wait = self.cfg.wait_in_open_s * self.cfg.wait_in_open_multiplier ** (self.attempts - 1)
            if self.cfg.wait_in_open_max_s is not None:
                wait = min(wait, self.cfg.wait_in_open_max_s)
            self.open_until = self.now + wait
        elif state == "HALF_OPEN":
            self.records = []
            self.permits = self.cfg.permitted_calls_in_half_open
            self.half_open_deadline = (
                self.now + self.cfg.max_wait_in_half_open_s
                if self.cfg.max_wait_in_half_open_s > 0
                else math.inf
            )
        elif state == "FORCED_OPEN":
            self.attempts += 1
            self.records = []
        elif state == "DISABLED":
            self.records = []
        else:
            self.attempts = 0
            self.records = []
        self.state = state

    def advance(self, dt: float) -> None:
        target = self.now + dt
        while True:
            due = math.inf
            if self.state == "OPEN" and self.cfg.automatic_transition_to_half_open:
                due = self.open_until
            elif self.state == "HALF_OPEN":
                due = self.half_open_deadline
            if due > target:
                break
            self.now = max(self.now, due)
            self.go("HALF_OPEN" if self.state == "OPEN" else "OPEN")
        self.now = target

    # -- calls -----------------------------------------------------------------------------
    def acquire(self) -> bool:
        if self.state == "OPEN" and self.now >= self.open_until:
            self.go("HALF_OPEN")
        if self.state == "HALF_OPEN":
            if self.permits > 0:
                self.permits -= 1
                return True
            return False
        return self.state not in {"OPEN", "FORCED_OPEN"}

    def record(self, *, failed: bool, slow: bool) -> None:
        if self.state in {"DISABLED", "FORCED_OPEN"}:
            return
        self.records.append((self.now, failed, slow))
        if self.state in {"OPEN", "METRICS_ONLY"}:
            return
        verdict = self._exceeded()
        if verdict is None:
            return
        if self.state == "CLOSED" and verdict:
            self.go("OPEN")
        elif self.state == "HALF_OPEN":
            self.go("OPEN" if verdict else "CLOSED")

    def release(self) -> None:
        if self.state == "HALF_OPEN" and self.permits < self.cfg.permitted_calls_in_half_open:
            self.permits += 1

    def remaining(self) -> float:
        if self.state == "OPEN":
            return max(self.open_until - self.now, 0.0)
        if self.state == "FORCED_OPEN":
            return math.inf
        return 0.0


configs = st.builds(
    CircuitBreakerConfig,
    sliding_window_type=st.sampled_from(["count_based", "time_based"]),
    sliding_window_size=st.integers(1, 6),
    minimum_calls=st.integers(1, 8),
    failure_rate_threshold=st.sampled_from([25.0, 50.0, 60.0, 100.0]),
    slow_call_rate_threshold=st.sampled_from([50.0, 100.0]),
    slow_call_duration_s=st.just(SLOW_S),
    permitted_calls_in_half_open=st.integers(1, 3),
    max_wait_in_half_open_s=st.sampled_from([0.0, 3.0]),
    wait_in_open_s=st.sampled_from([1.0, 2.0, 5.0]),
    wait_in_open_multiplier=st.sampled_from([1.0, 2.0]),
    wait_in_open_max_s=st.sampled_from([None, 8.0]),
    automatic_transition_to_half_open=st.booleans(),
    record_exceptions=st.just((ValueError,)),
    ignore_exceptions=st.just((PermissionError,)),
)

# outcome -> (raised exception or returned value, model classification)
OUTCOMES = {
    "ok": (None, "success"),
    "bad_result": ("bad", "failure"),
    "recorded_error": (ValueError("boom"), "failure"),
    "ignored_error": (PermissionError("nope"), "ignored"),
    "unrecorded_error": (RuntimeError("other"), "success"),
}


class BreakerMachine(RuleBasedStateMachine):
    @initialize(cfg=configs)
    def setup(self, cfg: CircuitBreakerConfig) -> None:
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(
            "model", cfg, clock=self.clock, record_result=lambda r: r == "bad"
        )
        self.model = Model(cfg)
        self.pending: list[float] = []  # start times of calls in flight (concurrent callers)

    @rule(outcome=st.sampled_from(sorted(OUTCOMES)), duration=st.sampled_from([0, 0.5, 1, 1.5]))
    def call(self, outcome: str, duration: float) -> None:
        value, kind = OUTCOMES[outcome]

        def body() -> object:
            self.clock.advance(duration)
            if isinstance(value, Exception):
                raise value
            return value

        expected_permit = self.model.acquire()
        try:
            self.breaker.call_sync(body)
        except CircuitOpenError:
            assert not expected_permit, "breaker refused a call the model permits"
            return
        except (ValueError, PermissionError, RuntimeError):
            pass
        assert expected_permit, "breaker permitted a call the model refuses"
        self.model.advance(duration)
        if kind == "ignored":
            self.model.release()
        else:
            self.model.record(failed=kind == "failure", slow=duration > SLOW_S)

    @rule()
    def begin(self) -> None:
        expected_permit = self.model.acquire()
        assert self.breaker.try_acquire() == expected_permit
        if expected_permit:
            self.pending.append(self.clock.monotonic())

    @precondition(lambda self: bool(getattr(self, "pending", None)))
    @rule(outcome=st.sampled_from(sorted(OUTCOMES)))
    def finish(self, outcome: str) -> None:
        value, kind = OUTCOMES[outcome]
        duration = self.clock.monotonic() - self.pending.pop(0)
        if isinstance(value, Exception):
            self.breaker.on_exception(duration, value)
        else:
            self.breaker.on_result(duration, value)
        if kind == "ignored":
            self.model.release()
        else:
            self.model.record(failed=kind == "failure", slow=duration > SLOW_S)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.0]))
    def wait(self, dt: float) -> None:
        self.clock.advance(dt)
        self.model.advance(dt)

    @rule(action=st.sampled_from(["force_open", "disable", "metrics_only", "close", "reset"]))
    def operator(self, action: str) -> None:
        target = {
            "force_open": "FORCED_OPEN",
            "disable": "DISABLED",
            "metrics_only": "METRICS_ONLY",
            "close": "CLOSED",
            "reset": "CLOSED",
        }[action]
        {
            "force_open": self.breaker.transition_to_forced_open,
            "disable": self.breaker.transition_to_disabled,
            "metrics_only": self.breaker.transition_to_metrics_only,
            "close": self.breaker.transition_to_closed,
            "reset": self.breaker.reset,
        }[action]()
        self.model.go(target)

    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "model"):
            return
        assert self.breaker.state.value == self.model.state
        assert self.breaker.remaining_wait_s == pytest.approx(self.model.remaining())


BreakerMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_matches_reference_model = BreakerMachine.TestCase
