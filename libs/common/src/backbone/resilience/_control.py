"""Remote control of a service's resilience instances over core NATS request/reply.

Every process using the library can answer on ``backbone.control.<service>.resilience``. The
subscription is deliberately *not* a queue group: each replica holds its own breakers, so each
must act and answer; the caller (:func:`request_all`, the ``backbone resilience`` CLI, the
anomaly detector, the chaos agent) gathers replies until a short timeout.

Request (JSON)::

    {"op": "list" | "force_open" | "close" | "disable" | "reset" | "metrics_only"
           | "set_rate" | "restore_rate",
     "name": "github-api",            # optional; omitted = every instance
     "rate_per_s": 50.0, "burst": 50} # set_rate only; burst optional

``force_open``, ``close``, ``disable`` and ``metrics_only`` act on circuit breakers; ``set_rate``
changes the rate of rate limiters (plain and keyed: every key's bucket) at runtime, as
Resilience4j's ``changeLimitForPeriod`` does, and ``restore_rate`` puts their configured rate
back; ``reset`` acts on every kind (a breaker goes back to CLOSED with an empty window, a
bulkhead to its configured limit, a limiter to its configured rate with a full bucket, a retry
forgets its success rate). ``list`` returns every instance. The reply::

    {"service": "...", "replica": "host-pid-xxxx", "ok": true, "op": "...",
     "instances": [{"kind": ..., "name": ..., "state": ..., ...}], "error": null}

Every mutating request is also emitted as a ``system.resilience.control.<service>.<op>`` event,
so operator actions land in the audit trail when a sink is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, Final, Self

import orjson

from backbone.errors import ConfigError
from backbone.resilience._breaker import CircuitBreaker
from backbone.resilience._ratelimiter import KeyedRateLimiter, RateLimiter

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from backbone.resilience._registry import ResilienceRegistry

__all__ = [
    "CONTROL_OPS",
    "ResilienceControl",
    "control_subject",
    "request_all",
]

logger = logging.getLogger("backbone.resilience")

CONTROL_OPS: Final = frozenset(
    {
        "list",
        "force_open",
        "close",
        "disable",
        "reset",
        "metrics_only",
        "set_rate",
        "restore_rate",
    }
)
_LIMITER_OPS: Final = frozenset({"set_rate", "restore_rate"})
_BREAKER_OPS: Final = {
    "force_open": CircuitBreaker.transition_to_forced_open,
    "close": CircuitBreaker.transition_to_closed,
    "disable": CircuitBreaker.transition_to_disabled,
    "metrics_only": CircuitBreaker.transition_to_metrics_only,
}


def control_subject(service: str) -> str:
    """``backbone.control.<service>.resilience``."""
    if not service or any(c in service for c in " .*>"):
        msg = f"service name {service!r} must be one non-empty subject token"
        raise ValueError(msg)
    return f"backbone.control.{service}.resilience"


class ResilienceControl:
    """Answers remote-control requests for one registry.

    Args:
        registry: The instances to control.
        nc: A connected NATS client.
        service: The service name (one subject token).
        replica: This process's id in replies; ``<host>-<pid>-<random>`` by default.
    """

    def __init__(
        self,
        registry: ResilienceRegistry,
        nc: Client,
        *,
        service: str,
        replica: str | None = None,
    ) -> None:
        self.registry = registry
        self.nc = nc
        self.service = service
        self.subject = control_subject(service)
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe (every replica, no queue group)."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
            # Make sure the server has the subscription before callers rely on it.
            await self.nc.flush()

    async def stop(self) -> None:
        """Unsubscribe."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            request = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            reply = self._reply("?", ok=False, error=f"request is not JSON: {exc}")
        else:
            reply = self.handle(request)
        if msg.reply:
            try:
                await msg.respond(orjson.dumps(reply))
            except Exception:
                logger.exception("cannot answer resilience control request")

    def handle(self, request: Any) -> dict[str, Any]:  # noqa: ANN401, PLR0911 - decoded JSON
        """Apply one request and build the reply (no I/O; unit-testable)."""
        if not isinstance(request, dict):
            return self._reply("?", ok=False, error="request must be a JSON object")
        op = request.get("op")
        name = request.get("name")
        if op not in CONTROL_OPS:
            return self._reply(
                str(op), ok=False, error=f"unknown op {op!r}; expected one of {sorted(CONTROL_OPS)}"
            )
        if name is not None and not isinstance(name, str):
            return self._reply(op, ok=False, error="name must be a string")
        registry = self.registry
        if op == "list":
            return self._reply(op, ok=True, instances=registry.snapshot(name=name))
        try:
            targets, details = self._act(op, name, request)
        except ConfigError as exc:
            return self._reply(op, ok=False, error=str(exc))
        if name is not None and not targets:
            kind = {"reset": "instance", "set_rate": "rate limiter", "restore_rate": "rate limiter"}
            return self._reply(
                op, ok=False, error=f"no {kind.get(op, 'circuit breaker')} named {name!r}"
            )
        logger.warning(
            "resilience control: %s on %s (%d instance(s))", op, name or "*", len(targets)
        )
        registry.events.emit(
            "control",
            self.service,
            op,
            {
                "target": name,
                "replica": self.replica,
                "instances": [t.name for t in targets],
                **details,
            },
        )
        return self._reply(op, ok=True, instances=[t.metrics() for t in targets])

    def _act(
        self,
        op: str,
        name: str | None,
        request: dict[str, Any],
    ) -> tuple[list[Any], dict[str, Any]]:
        """Apply a mutating op; the instances acted on and what the audit event should add."""
        registry = self.registry
        if op == "reset":
            targets = registry.find(name=name)
            for instance in targets:
                instance.reset()
            return targets, {}
        if op in _LIMITER_OPS:
            limiters = [
                i
                for i in registry.find(kind="ratelimiter", name=name)
                if isinstance(i, RateLimiter | KeyedRateLimiter)
            ]
            if op == "restore_rate":
                for limiter in limiters:
                    limiter.restore_rate()
                return limiters, {}
            rate, burst = _rate_arguments(request)
            for limiter in limiters:
                limiter.set_rate(rate, burst=burst)
            return limiters, {"rate_per_s": rate, "burst": burst}
        breakers = registry.find(kind="circuitbreaker", name=name)
        action = _BREAKER_OPS[op]
        for breaker in breakers:
            if isinstance(breaker, CircuitBreaker):
                action(breaker)
        return breakers, {}

    def _reply(
        self,
        op: str,
        *,
        ok: bool,
        instances: list[dict[str, Any]] | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        return {
            "service": self.service,
            "replica": self.replica,
            "op": op,
            "ok": ok,
            "instances": instances or [],
            "error": error,
        }


def _number(value: object, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        msg = f"{field} must be a finite number, not {value!r}"
        raise ConfigError(msg, variable=field)
    return float(value)


def _rate_arguments(request: dict[str, Any]) -> tuple[float, float | None]:
    """``rate_per_s`` (required, > 0) and ``burst`` (optional, >= 1) of a ``set_rate``."""
    rate = _number(request.get("rate_per_s"), "rate_per_s")
    if rate is None or rate <= 0:
        msg = "set_rate needs rate_per_s > 0"
        raise ConfigError(msg, variable="rate_per_s")
    burst = _number(request.get("burst"), "burst")
    if burst is not None and burst < 1:
        msg = "burst must be >= 1"
        raise ConfigError(msg, variable="burst")
    return rate, burst


async def request_all(
    nc: Client,
    service: str,
    op: str,
    *,
    name: str | None = None,
    timeout_s: float = 1.0,
    expected_replies: int | None = None,
    rate_per_s: float | None = None,
    burst: float | None = None,
) -> list[dict[str, Any]]:
    """Send one control request and gather every replica's reply.

    Args:
        nc: A connected NATS client.
        service: The service to address.
        op: One of :data:`CONTROL_OPS`.
        name: The instance name, or None for all.
        timeout_s: How long to wait for replies (there is no way to know how many replicas exist).
        expected_replies: Return as soon as this many replies arrived.
        rate_per_s: ``set_rate``: the new rate (required there, refused elsewhere).
        burst: ``set_rate``: the new bucket capacity (optional; follows the rate when omitted).

    Returns:
        The replies, in arrival order (empty when nobody answered).

    Raises:
        ValueError: Unknown op, or rate arguments missing or given to another op.
    """
    if op not in CONTROL_OPS:
        msg = f"unknown op {op!r}; expected one of {sorted(CONTROL_OPS)}"
        raise ValueError(msg)
    if op == "set_rate":
        _rate_arguments({"rate_per_s": rate_per_s, "burst": burst})
    elif rate_per_s is not None or burst is not None:
        msg = f"rate_per_s and burst belong to set_rate, not {op}"
        raise ValueError(msg)
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        try:
            replies.append(orjson.loads(msg.data))
        except orjson.JSONDecodeError:
            logger.warning("ignoring a malformed resilience control reply")
            return
        if expected_replies is not None and len(replies) >= expected_replies:
            enough.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        body: dict[str, Any] = {"op": op}
        if name is not None:
            body["name"] = name
        if rate_per_s is not None:
            body["rate_per_s"] = rate_per_s
        if burst is not None:
            body["burst"] = burst
        await nc.publish(control_subject(service), orjson.dumps(body), reply=inbox)
        await nc.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), timeout_s)
    finally:
        await sub.unsubscribe()
    return replies
