"""What to do about a finding: suggested actions, and the gate in front of automatic ones.

Suggestions (``ai.action.suggested``), by what was found:

==========================================  =================================================
finding                                     actions
==========================================  =================================================
latency anomaly / latency prediction        ``open_breaker`` (service), ``enable_cache``
error anomaly / error-rate prediction       ``open_breaker`` (service)
pending, ack-pending, redelivery anomaly    ``scale_consumer``
stream-limit prediction                     ``scale_consumer``, ``throttle_producer``
publish-rate rise (service, stream, type)   ``throttle_producer``
==========================================  =================================================

Two actions are *executable*, both through ``backbone.control.<service>.resilience``:

* ``open_breaker`` -> ``force_open`` of the service's breaker(s), reverted by ``close``;
* ``throttle_producer`` -> ``set_rate`` of the rate limiter admitting the producers of the
  stream concerned (``ActionSettings.producers``: stream -> ``<service>/<limiter>``, by default
  the event gateway's global ingress limiter for the streams it writes to), at
  ``throttle_fraction`` of the observed rate, reverted by ``restore_rate``. A throttle is
  suggested only for a rate that went *up* (a drop is no reason to slow a producer down); its
  target is the limiter (``event-gateway/event-gateway-global``), so one limiter carries at
  most one throttle whichever of its streams triggered it.

Scaling and caches have no control subject, so they stay suggestions for an operator.

:class:`ActionGate` decides whether an executable suggestion is applied: enabled, allowlisted
(``<action>:<target>`` globs), not within ``min_interval_s`` of the previous action on that
target, under ``max_per_hour`` overall; every applied action expires after ``expire_after_s``.
Time comes from an injectable clock.
"""

from __future__ import annotations

import fnmatch
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from anomaly_detector.settings import ActionSettings

OPEN_BREAKER: Final = "open_breaker"
CLOSE_BREAKER: Final = "close_breaker"
ENABLE_CACHE: Final = "enable_cache"
SCALE_CONSUMER: Final = "scale_consumer"
THROTTLE_PRODUCER: Final = "throttle_producer"
RESTORE_PRODUCER: Final = "restore_producer"
#: Suggested action -> resilience control op that applies it.
EXECUTABLE_OPS: Final = {OPEN_BREAKER: "force_open", THROTTLE_PRODUCER: "set_rate"}
#: Suggested action -> (recorded action, resilience control op) that reverts it on expiry.
REVERT_OPS: Final = {
    OPEN_BREAKER: (CLOSE_BREAKER, "close"),
    THROTTLE_PRODUCER: (RESTORE_PRODUCER, "restore_rate"),
}
_HOUR_S: Final = 3600.0

_LATENCY_HINTS: Final = ("latency",)
_ERROR_HINTS: Final = ("error", "dead_letter", "dead_lettered")
_BACKLOG_HINTS: Final = ("pending", "redelivered", "ack_pending")
_RATE_HINTS: Final = ("published_per_s", "rate_per_s")


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One suggested action.

    Attributes:
        action: ``open_breaker``, ``enable_cache``, ``scale_consumer``, ``throttle_producer``.
        target: ``<service>`` or ``<service>/<breaker>`` for breakers, ``<service>/<limiter>``
            for an executable throttle; the entity otherwise.
        service: The service a control request goes to (executable actions only).
        name: The breaker (or rate limiter) name; None for every breaker of the service.
        reason: One sentence for the operator.
        confidence: In [0, 1], inherited from the finding.
        rate_per_s: The rate a throttle sets (``set_rate``).
    """

    action: str
    target: str
    reason: str
    confidence: float
    service: str | None = None
    name: str | None = None
    rate_per_s: float | None = None

    @property
    def executable(self) -> bool:
        """Whether the service can apply it through a control subject."""
        if self.action == THROTTLE_PRODUCER:
            return (
                self.service is not None and self.name is not None and self.rate_per_s is not None
            )
        return self.action in EXECUTABLE_OPS and self.service is not None

    @property
    def op(self) -> str | None:
        """The resilience control op applying it."""
        return EXECUTABLE_OPS.get(self.action)


@dataclass(frozen=True, slots=True)
class Throttle:
    """Where and how hard a producer can be throttled: ``set_rate`` of one rate limiter.

    Attributes:
        service: The service holding the limiter (control subject token).
        limiter: The rate limiter's name in that service.
        rate_per_s: The rate to set.
        observed_per_s: The rate that was observed (for the operator).
    """

    service: str
    limiter: str
    rate_per_s: float
    observed_per_s: float


def _matches(metric: str, hints: tuple[str, ...]) -> bool:
    return any(hint in metric for hint in hints)


def _throttle(entity: str, why: str, confidence: float, throttle: Throttle | None) -> Suggestion:
    if throttle is None:
        return Suggestion(
            THROTTLE_PRODUCER, entity, f"{entity}: {why}; throttle its producers", confidence
        )
    return Suggestion(
        THROTTLE_PRODUCER,
        f"{throttle.service}/{throttle.limiter}",
        f"{entity}: {why}; throttle its producers at {throttle.service}/{throttle.limiter} to "
        f"{throttle.rate_per_s:g}/s (observed {throttle.observed_per_s:g}/s)",
        confidence,
        service=throttle.service,
        name=throttle.limiter,
        rate_per_s=throttle.rate_per_s,
    )


def suggest(
    *,
    finding: str,
    entity: str,
    kind: str,
    metric: str,
    confidence: float,
    breakers: dict[str, str] | None = None,
    throttle: Throttle | None = None,
    rising: bool = True,
) -> list[Suggestion]:
    """The suggestions for one finding (see the table in the module docstring).

    Args:
        finding: ``anomaly`` or ``prediction.<kind>`` (``prediction.latency``...).
        entity: The entity of the finding.
        kind: The entity's kind (``service``, ``stream``, ``consumer``, ``event_type``).
        metric: The metric concerned.
        confidence: The finding's confidence.
        breakers: service -> breaker name to open (else every breaker of the service).
        throttle: The limiter admitting this entity's producers, with the rate to set; makes
            ``throttle_producer`` executable.
        rising: Whether the value went up (a rate that dropped suggests no throttle).
    """
    out: list[Suggestion] = []
    prediction = finding.removeprefix("prediction.") if finding.startswith("prediction.") else None
    latency = prediction == "latency" or (prediction is None and _matches(metric, _LATENCY_HINTS))
    errors = prediction == "error_rate" or (prediction is None and _matches(metric, _ERROR_HINTS))
    if kind == "service" and (latency or errors):
        name = (breakers or {}).get(entity)
        target = f"{entity}/{name}" if name else entity
        why = "latency is degrading" if latency else "errors are rising"
        out.append(
            Suggestion(
                OPEN_BREAKER,
                target,
                f"{entity}: {metric} {why}; open its breaker to shed load and fail fast",
                confidence,
                service=entity,
                name=name,
            )
        )
        if latency:
            out.append(
                Suggestion(
                    ENABLE_CACHE,
                    entity,
                    f"{entity}: {metric} is degrading; cache idempotent reads",
                    confidence,
                )
            )
    if prediction == "stream_limit":
        out.append(
            Suggestion(
                SCALE_CONSUMER,
                entity,
                f"{entity}: {metric} will exceed the stream limit; add consumer replicas",
                confidence,
            )
        )
        out.append(
            _throttle(entity, f"{metric} will exceed the stream limit", confidence, throttle)
        )
    elif prediction is None and _matches(metric, _BACKLOG_HINTS):
        out.append(
            Suggestion(
                SCALE_CONSUMER, entity, f"{entity}: {metric} is abnormal; add consumers", confidence
            )
        )
    elif prediction is None and rising and _matches(metric, _RATE_HINTS):
        out.append(_throttle(entity, f"{metric} is abnormally high", confidence, throttle))
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's verdict on one suggestion: ``applied`` or why not."""

    apply: bool
    reason: str
    expires_at_s: float | None = None


@dataclass(slots=True)
class AppliedAction:
    """An action in force, to be reverted at ``expires_at_s``."""

    id: str
    suggestion: Suggestion
    applied_at_s: float
    expires_at_s: float


@dataclass
class ActionGate:
    """Enabled + allowlist + rate limits + expiry, with an injectable clock (wall seconds).

    Args:
        settings: The ``actions`` settings.
        clock: Returns the current time in seconds.
    """

    settings: ActionSettings
    clock: Callable[[], float] = time.time
    _last_by_target: dict[str, float] = field(default_factory=dict)
    _recent: deque[float] = field(default_factory=deque)
    _in_force: dict[str, AppliedAction] = field(default_factory=dict)

    def allowlisted(self, suggestion: Suggestion) -> bool:
        """Whether an allowlist entry matches ``<action>:<target>``."""
        key = f"{suggestion.action}:{suggestion.target}"
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.settings.allowlist)

    def decide(self, suggestion: Suggestion) -> Decision:
        """Whether to apply ``suggestion`` now (does not record it: call :meth:`record`)."""
        now = self.clock()
        while self._recent and self._recent[0] <= now - _HOUR_S:
            self._recent.popleft()
        checks = (
            (self.settings.enabled, "disabled"),
            (suggestion.executable, "not_executable"),
            (self.allowlisted(suggestion), "not_allowlisted"),
            (suggestion.target not in self._in_force, "already_in_force"),
            (
                now - self._last_by_target.get(suggestion.target, -float("inf"))
                >= self.settings.min_interval_s,
                "rate_limited_target",
            ),
            (len(self._recent) < self.settings.max_per_hour, "rate_limited_global"),
        )
        for ok, reason in checks:
            if not ok:
                return Decision(apply=False, reason=reason)
        return Decision(
            apply=True, reason="applied", expires_at_s=now + self.settings.expire_after_s
        )

    def record(self, action_id: str, suggestion: Suggestion) -> AppliedAction:
        """Note that ``suggestion`` was applied now; it expires after ``expire_after_s``."""
        now = self.clock()
        self._last_by_target[suggestion.target] = now
        self._recent.append(now)
        applied = AppliedAction(action_id, suggestion, now, now + self.settings.expire_after_s)
        self._in_force[suggestion.target] = applied
        return applied

    def due(self) -> list[AppliedAction]:
        """Remove and return the actions whose expiry has come."""
        now = self.clock()
        expired = [a for a in self._in_force.values() if a.expires_at_s <= now]
        for action in expired:
            del self._in_force[action.suggestion.target]
        return expired

    def forget(self, target: str) -> None:
        """Drop the action in force on ``target`` without reverting it (it did not take)."""
        self._in_force.pop(target, None)

    @property
    def in_force(self) -> list[AppliedAction]:
        """Applied actions not yet expired."""
        return list(self._in_force.values())
