"""Prometheus export of the patterns' counters, read at scrape time.

The patterns keep plain integer counters; :class:`ResilienceCollector` turns them into metric
families only when Prometheus scrapes, so a protected call never touches a metrics lock. One
collector per :class:`ResilienceRegistry` and Prometheus registry; nothing is registered globally
at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from backbone.resilience._breaker import CircuitBreaker, CircuitState
from backbone.resilience._bulkhead import Bulkhead
from backbone.resilience._ratelimiter import KeyedRateLimiter, RateLimiter
from backbone.resilience._retry import Retry
from backbone.resilience._timelimiter import TimeLimiter

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prometheus_client import Metric

    from backbone.resilience._registry import ResilienceRegistry

__all__ = ["ResilienceCollector"]


class ResilienceCollector(Collector):
    """Exports ``backbone_resilience_*`` metrics for every instance of a registry.

    Args:
        registry: The instances to export.
        namespace: Metric name prefix.
    """

    def __init__(
        self, registry: ResilienceRegistry, *, namespace: str = "backbone_resilience"
    ) -> None:
        self._registry = registry
        self._ns = namespace

    def describe(self) -> Iterable[Metric]:
        # Names depend on which instances exist at scrape time; no up-front description.
        return []

    def collect(self) -> Iterable[Metric]:  # noqa: C901, PLR0912 - one flat list of families
        ns = self._ns
        cb_state = GaugeMetricFamily(
            f"{ns}_circuitbreaker_state",
            "1 for the breaker's current state",
            labels=["name", "state"],
        )
        cb_calls = CounterMetricFamily(
            f"{ns}_circuitbreaker_calls", "Calls by outcome", labels=["name", "kind"]
        )
        cb_rate = GaugeMetricFamily(
            f"{ns}_circuitbreaker_failure_rate",
            "Failure rate in the window, percent (-1 below minimum calls)",
            labels=["name"],
        )
        cb_slow_rate = GaugeMetricFamily(
            f"{ns}_circuitbreaker_slow_call_rate",
            "Slow call rate in the window, percent (-1 below minimum calls)",
            labels=["name"],
        )
        retry_calls = CounterMetricFamily(
            f"{ns}_retry_calls", "Calls by final outcome", labels=["name", "kind"]
        )
        retry_retries = CounterMetricFamily(
            f"{ns}_retry_retries", "Retry attempts made", labels=["name"]
        )
        retry_tokens = GaugeMetricFamily(
            f"{ns}_retry_budget_tokens", "Tokens left in the retry budget", labels=["name"]
        )
        bh_limit = GaugeMetricFamily(
            f"{ns}_bulkhead_max_concurrent", "Current concurrency limit", labels=["name"]
        )
        bh_inflight = GaugeMetricFamily(f"{ns}_bulkhead_inflight", "Calls running", labels=["name"])
        bh_calls = CounterMetricFamily(
            f"{ns}_bulkhead_calls", "Calls by admission outcome", labels=["name", "kind"]
        )
        rl_available = GaugeMetricFamily(
            f"{ns}_ratelimiter_available_permits", "Permits in the bucket", labels=["name"]
        )
        rl_calls = CounterMetricFamily(
            f"{ns}_ratelimiter_calls", "Calls by admission outcome", labels=["name", "kind"]
        )
        rl_keys = GaugeMetricFamily(
            f"{ns}_ratelimiter_keys", "Buckets held by a keyed limiter", labels=["name"]
        )
        tl_calls = CounterMetricFamily(
            f"{ns}_timelimiter_calls", "Calls by outcome", labels=["name", "kind"]
        )
        dropped = CounterMetricFamily(
            f"{ns}_events_dropped", "Events the sink never received", labels=[]
        )
        for instance in self._registry:
            name = instance.name
            if isinstance(instance, CircuitBreaker):
                current = instance.state
                for state in CircuitState:
                    cb_state.add_metric([name, state.value], 1.0 if state is current else 0.0)
                for kind, value in (
                    ("successful", instance.successful_calls),
                    ("failed", instance.failed_calls),
                    ("slow", instance.slow_calls),
                    ("not_permitted", instance.not_permitted_calls),
                    ("ignored", instance.ignored_calls),
                ):
                    cb_calls.add_metric([name, kind], value)
                snapshot = instance.metrics()
                cb_rate.add_metric([name], snapshot["failure_rate"])
                cb_slow_rate.add_metric([name], snapshot["slow_call_rate"])
            elif isinstance(instance, Retry):
                for kind, value in (
                    ("successful_without_retry", instance.successful_without_retry),
                    ("successful_with_retry", instance.successful_with_retry),
                    ("failed_without_retry", instance.failed_without_retry),
                    ("failed_with_retry", instance.failed_with_retry),
                    ("budget_exhausted", instance.budget_exhausted),
                ):
                    retry_calls.add_metric([name, kind], value)
                retry_retries.add_metric([name], instance.retries)
                if instance.budget is not None:
                    retry_tokens.add_metric([name], instance.budget.tokens)
            elif isinstance(instance, Bulkhead):
                bh_limit.add_metric([name], instance.limit)
                bh_inflight.add_metric([name], instance.inflight)
                for kind, value in (
                    ("permitted", instance.permitted_calls),
                    ("rejected", instance.rejected_calls),
                    ("finished", instance.finished_calls),
                ):
                    bh_calls.add_metric([name, kind], value)
            elif isinstance(instance, (RateLimiter, KeyedRateLimiter)):
                if isinstance(instance, RateLimiter):
                    rl_available.add_metric([name], instance.available_permits)
                else:
                    rl_keys.add_metric([name], len(instance))
                for kind, value in (
                    ("admitted", instance.admitted_calls),
                    ("rejected", instance.rejected_calls),
                    ("waited", instance.waited_calls),
                ):
                    rl_calls.add_metric([name, kind], value)
            elif isinstance(instance, TimeLimiter):
                for kind, value in (
                    ("successful", instance.successful_calls),
                    ("failed", instance.failed_calls),
                    ("timed_out", instance.timed_out_calls),
                ):
                    tl_calls.add_metric([name, kind], value)
        dropped.add_metric([], self._registry.events.dropped)
        yield from (
            cb_state,
            cb_calls,
            cb_rate,
            cb_slow_rate,
            retry_calls,
            retry_retries,
            retry_tokens,
            bh_limit,
            bh_inflight,
            bh_calls,
            rl_available,
            rl_calls,
            rl_keys,
            tl_calls,
            dropped,
        )
