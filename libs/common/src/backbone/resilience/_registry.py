"""Named instances built from configuration (settings or YAML), with the seed's presets.

A :class:`ResilienceConfig` has one section per kind; each section has ``defaults`` (the preset
unless overridden) and ``instances``, whose entries only list what differs from the defaults::

    # resilience.yaml (a top-level ``resilience:`` key is accepted too)
    circuit_breakers:
      defaults: {wait_in_open_s: 30}
      instances:
        github-api: {failure_rate_threshold: 25, record_exceptions: [httpx.TransportError]}
    bulkheads:
      instances:
        mcp-tools: {max_concurrent: 4, max_wait_s: 0.5}
    rate_limiters:
      instances:
        gateway-per-key: {rate_per_s: 20, burst: 40, max_wait_s: 0}

In settings the same tree nests under a service's section, e.g.
``BACKBONE_RESILIENCE__CIRCUIT_BREAKERS__DEFAULTS__WAIT_IN_OPEN_S=30``.

Seed presets (the defaults of each section): breaker opens after 5 failures in a row (a
count-based window of 5 at 100 %) and tries again after 60 s with one trial call; bulkhead 10
concurrent calls; rate limiter 100 calls/s (burst 100); retry 3 attempts with the budget; time
limiter 1 s.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backbone.errors import ConfigError
from backbone.resilience._breaker import CircuitBreaker, CircuitBreakerConfig
from backbone.resilience._bulkhead import Bulkhead, BulkheadConfig
from backbone.resilience._compose import Policy
from backbone.resilience._events import EventHub, EventListener, EventSink
from backbone.resilience._ratelimiter import KeyedRateLimiter, RateLimiter, RateLimiterConfig
from backbone.resilience._retry import Retry, RetryBudget, RetryConfig
from backbone.resilience._timelimiter import TimeLimiter, TimeLimiterConfig

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Collection, Iterator

    from prometheus_client import CollectorRegistry

    from backbone.resilience._clock import Clock

__all__ = [
    "PRESET_BULKHEAD",
    "PRESET_CIRCUIT_BREAKER",
    "PRESET_RATE_LIMITER",
    "PRESET_RETRY",
    "PRESET_TIME_LIMITER",
    "Instance",
    "Kind",
    "ResilienceConfig",
    "ResilienceRegistry",
    "load_resilience_config",
]

Kind = Literal["circuitbreaker", "retry", "bulkhead", "ratelimiter", "timelimiter"]
Instance = CircuitBreaker | Retry | Bulkhead | RateLimiter | KeyedRateLimiter | TimeLimiter

PRESET_CIRCUIT_BREAKER = CircuitBreakerConfig(
    sliding_window_size=5,
    minimum_calls=5,
    failure_rate_threshold=100.0,
    wait_in_open_s=60.0,
    permitted_calls_in_half_open=1,
)
"""The seed's breaker: 5 failures in a row open it; one trial call after 60 s."""
PRESET_RETRY = RetryConfig()
PRESET_BULKHEAD = BulkheadConfig(max_concurrent=10)
PRESET_RATE_LIMITER = RateLimiterConfig(rate_per_s=100.0)
PRESET_TIME_LIMITER = TimeLimiterConfig()

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Section(BaseModel, Generic[ConfigT]):
    """Defaults plus per-instance overrides for one kind."""

    model_config = ConfigDict(extra="forbid")

    defaults: ConfigT
    instances: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _instances_valid(self) -> Self:
        for name in self.instances:
            self.config_for(name)  # raises ValidationError naming the bad field
        return self

    def config_for(self, name: str) -> ConfigT:
        """The defaults with ``name``'s overrides applied (just the defaults for other names)."""
        overrides = self.instances.get(name)
        if not overrides:
            return self.defaults
        merged = {**self.defaults.model_dump(exclude_unset=False), **overrides}
        return type(self.defaults).model_validate(merged)


class ResilienceConfig(BaseModel):
    """Configuration of every named instance; nest it in a service's settings or load YAML."""

    model_config = ConfigDict(extra="forbid")

    circuit_breakers: Section[CircuitBreakerConfig] = Field(
        default_factory=lambda: Section[CircuitBreakerConfig](defaults=PRESET_CIRCUIT_BREAKER)
    )
    retries: Section[RetryConfig] = Field(
        default_factory=lambda: Section[RetryConfig](defaults=PRESET_RETRY)
    )
    bulkheads: Section[BulkheadConfig] = Field(
        default_factory=lambda: Section[BulkheadConfig](defaults=PRESET_BULKHEAD)
    )
    rate_limiters: Section[RateLimiterConfig] = Field(
        default_factory=lambda: Section[RateLimiterConfig](defaults=PRESET_RATE_LIMITER)
    )
    time_limiters: Section[TimeLimiterConfig] = Field(
        default_factory=lambda: Section[TimeLimiterConfig](defaults=PRESET_TIME_LIMITER)
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:  # noqa: ANN401 - raw input
        # A section given without `defaults` starts from the preset, not the library default;
        # `defaults` given partially are merged over the preset too.
        if not isinstance(data, dict):
            return data
        presets: dict[str, BaseModel] = {
            "circuit_breakers": PRESET_CIRCUIT_BREAKER,
            "retries": PRESET_RETRY,
            "bulkheads": PRESET_BULKHEAD,
            "rate_limiters": PRESET_RATE_LIMITER,
            "time_limiters": PRESET_TIME_LIMITER,
        }
        out = dict(data)
        for key, preset in presets.items():
            section = out.get(key)
            if isinstance(section, dict):
                section = dict(section)
                given = section.get("defaults") or {}
                if isinstance(given, dict):
                    section["defaults"] = {**preset.model_dump(), **given}
                out[key] = section
        return out

    @classmethod
    def from_yaml(cls, path: str | Path) -> ResilienceConfig:
        """Load a YAML file (an optional top-level ``resilience:`` key is unwrapped).

        Raises:
            ConfigError: The file is unreadable or a value is invalid; ``variable`` names the key.
        """
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}", variable=str(path)) from exc
        if isinstance(raw, dict) and set(raw) == {"resilience"}:
            raw = raw["resilience"] or {}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"invalid resilience config in {path}: {exc}", variable=key) from exc


def load_resilience_config(path: str | Path | None = None) -> ResilienceConfig:
    """The config in ``path``, or the presets when ``path`` is None."""
    return ResilienceConfig() if path is None else ResilienceConfig.from_yaml(path)


_KIND_OF: dict[type, Kind] = {
    CircuitBreaker: "circuitbreaker",
    Retry: "retry",
    Bulkhead: "bulkhead",
    RateLimiter: "ratelimiter",
    KeyedRateLimiter: "ratelimiter",
    TimeLimiter: "timelimiter",
}


class ResilienceRegistry:
    """Creates and keeps named instances; one per process (or per test).

    All instances share the registry's clock and :class:`EventHub`, so one listener, one sink and
    one metrics collector see everything, and the remote control can find instances by name.

    Args:
        config: Defaults and per-name settings; the presets when omitted.
        clock: Time source given to every instance.
        events: The shared hub; a new one when omitted.
        rng: Random source for retries' jitter.
    """

    def __init__(
        self,
        config: ResilienceConfig | None = None,
        *,
        clock: Clock | None = None,
        events: EventHub | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or ResilienceConfig()
        self.clock = clock
        self.events = events or EventHub()
        self._rng = rng
        self._lock = threading.Lock()
        self._instances: dict[tuple[Kind, str], Instance] = {}
        self._bound_metrics: list[CollectorRegistry] = []

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> ResilienceRegistry:  # noqa: ANN401
        """A registry configured from a YAML file (see :meth:`ResilienceConfig.from_yaml`)."""
        return cls(ResilienceConfig.from_yaml(path), **kwargs)

    # ------------------------------------------------------------------ lookup and creation

    def _get_or_create(self, kind: Kind, name: str, factory: Callable[[], Instance]) -> Instance:
        with self._lock:
            found = self._instances.get((kind, name))
            if found is None:
                found = factory()
                self._instances[(kind, name)] = found
            return found

    def _check(self, instance: Instance, expected: type) -> Any:  # noqa: ANN401 - narrowed by caller
        if not isinstance(instance, expected):
            msg = f"{instance!r} is already registered under this name as another type"
            raise TypeError(msg)
        return instance

    def circuit_breaker(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        record_exception: Callable[[BaseException], bool] | None = None,
        ignore_exception: Callable[[BaseException], bool] | None = None,
        record_result: Callable[[Any], bool] | None = None,
    ) -> CircuitBreaker:
        """The breaker called ``name``, created on first use from ``config`` or the registry's."""
        instance = self._get_or_create(
            "circuitbreaker",
            name,
            lambda: CircuitBreaker(
                name,
                config or self.config.circuit_breakers.config_for(name),
                record_exception=record_exception,
                ignore_exception=ignore_exception,
                record_result=record_result,
                clock=self.clock,
                events=self.events,
            ),
        )
        return self._check(instance, CircuitBreaker)  # type: ignore[no-any-return]

    def retry(
        self,
        name: str,
        config: RetryConfig | None = None,
        *,
        retry_on_result: Callable[[Any], bool] | None = None,
        retry_exception: Callable[[BaseException], bool] | None = None,
        budget: RetryBudget | None = None,
    ) -> Retry:
        """The retry called ``name``, created on first use."""
        instance = self._get_or_create(
            "retry",
            name,
            lambda: Retry(
                name,
                config or self.config.retries.config_for(name),
                retry_on_result=retry_on_result,
                retry_exception=retry_exception,
                budget=budget,
                clock=self.clock,
                rng=self._rng,
                events=self.events,
            ),
        )
        return self._check(instance, Retry)  # type: ignore[no-any-return]

    def bulkhead(self, name: str, config: BulkheadConfig | None = None) -> Bulkhead:
        """The bulkhead called ``name``, created on first use."""
        instance = self._get_or_create(
            "bulkhead",
            name,
            lambda: Bulkhead(
                name,
                config or self.config.bulkheads.config_for(name),
                clock=self.clock,
                events=self.events,
            ),
        )
        return self._check(instance, Bulkhead)  # type: ignore[no-any-return]

    def rate_limiter(self, name: str, config: RateLimiterConfig | None = None) -> RateLimiter:
        """The rate limiter called ``name``, created on first use."""
        instance = self._get_or_create(
            "ratelimiter",
            name,
            lambda: RateLimiter(
                name,
                config or self.config.rate_limiters.config_for(name),
                clock=self.clock,
                events=self.events,
            ),
        )
        return self._check(instance, RateLimiter)  # type: ignore[no-any-return]

    def keyed_rate_limiter(
        self, name: str, config: RateLimiterConfig | None = None
    ) -> KeyedRateLimiter:
        """The keyed rate limiter called ``name`` (shares the ``rate_limiters`` section)."""
        instance = self._get_or_create(
            "ratelimiter",
            name,
            lambda: KeyedRateLimiter(
                name,
                config or self.config.rate_limiters.config_for(name),
                clock=self.clock,
                events=self.events,
            ),
        )
        return self._check(instance, KeyedRateLimiter)  # type: ignore[no-any-return]

    def time_limiter(self, name: str, config: TimeLimiterConfig | None = None) -> TimeLimiter:
        """The time limiter called ``name``, created on first use."""
        instance = self._get_or_create(
            "timelimiter",
            name,
            lambda: TimeLimiter(
                name,
                config or self.config.time_limiters.config_for(name),
                clock=self.clock,
                events=self.events,
            ),
        )
        return self._check(instance, TimeLimiter)  # type: ignore[no-any-return]

    def policy(self, name: str, *, kinds: Collection[Kind] | None = None) -> Policy:
        """A :class:`Policy` of the instances called ``name``.

        Args:
            name: Shared by every pattern of the policy.
            kinds: Which patterns to include; by default those with an entry for ``name`` in the
                config, or retry + circuit breaker when there is none.
        """
        if kinds is None:
            sections: dict[Kind, Section[Any]] = {
                "circuitbreaker": self.config.circuit_breakers,
                "retry": self.config.retries,
                "bulkhead": self.config.bulkheads,
                "ratelimiter": self.config.rate_limiters,
                "timelimiter": self.config.time_limiters,
            }
            kinds = [kind for kind, section in sections.items() if name in section.instances]
            if not kinds:
                kinds = ["retry", "circuitbreaker"]
        wanted = set(kinds)
        return Policy(
            retry=self.retry(name) if "retry" in wanted else None,
            circuit_breaker=self.circuit_breaker(name) if "circuitbreaker" in wanted else None,
            rate_limiter=self.rate_limiter(name) if "ratelimiter" in wanted else None,
            bulkhead=self.bulkhead(name) if "bulkhead" in wanted else None,
            time_limiter=self.time_limiter(name) if "timelimiter" in wanted else None,
        )

    def register(self, instance: Instance) -> None:
        """Add an instance built elsewhere (it keeps its own clock and events)."""
        kind = _KIND_OF[type(instance)]
        with self._lock:
            if (kind, instance.name) in self._instances:
                msg = f"a {kind} named {instance.name!r} is already registered"
                raise ValueError(msg)
            self._instances[(kind, instance.name)] = instance

    def __iter__(self) -> Iterator[Instance]:
        with self._lock:
            return iter(list(self._instances.values()))

    def __len__(self) -> int:
        return len(self._instances)

    def find(self, *, kind: Kind | None = None, name: str | None = None) -> list[Instance]:
        """Instances matching ``kind`` and ``name`` (None matches any), in creation order."""
        return [
            instance
            for (k, n), instance in list(self._instances.items())
            if (kind is None or k == kind) and (name is None or n == name)
        ]

    def snapshot(self, *, name: str | None = None) -> list[dict[str, Any]]:
        """Every instance's :meth:`metrics` (JSON-ready), optionally only those called ``name``."""
        return [instance.metrics() for instance in self.find(name=name)]

    # ------------------------------------------------------------------ observability

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every event of the registry's instances."""
        self.events.add_listener(listener)

    def attach_sink(self, sink: EventSink) -> None:
        """Send transitions, rejections, retries and budget exhaustion to ``sink(type, data)``."""
        self.events.attach_sink(sink)

    def bind_metrics(self, registry: CollectorRegistry | None = None) -> None:
        """Export every instance's metrics through ``registry`` (default: prometheus' global one).

        Idempotent per Prometheus registry; the values are read at scrape time, so calls pay
        nothing for metrics.
        """
        from prometheus_client import REGISTRY  # noqa: PLC0415 - only when metrics are wanted

        from backbone.resilience._metrics import ResilienceCollector  # noqa: PLC0415

        target = REGISTRY if registry is None else registry
        if any(bound is target for bound in self._bound_metrics):
            return
        target.register(ResilienceCollector(self))
        self._bound_metrics.append(target)
