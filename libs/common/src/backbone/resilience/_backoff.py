"""Backoff for loops that retry until they are stopped (connects, relay sessions).

:class:`~backbone.resilience.Retry` bounds one call by attempts, time and a budget; a service
that must keep trying for as long as it runs (reconnect to NATS, reopen a PostgreSQL session)
needs only the delay sequence: exponential, capped, jittered so replicas do not retry in step,
and reset after a success.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential delays with equal jitter, capped, reset after a success.

    The n-th delay is uniform in ``[d/2, d]`` with ``d = min(initial_s * 2**n, max_s)``: never
    shorter than half the nominal wait (a tight loop is impossible), never in lockstep.

    Args:
        initial_s: First nominal delay.
        max_s: Cap of the nominal delay.
        rng: Random source (seed it in tests).
    """

    __slots__ = ("_initial_s", "_max_s", "_next_s", "_rng")

    def __init__(self, initial_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self._initial_s = initial_s
        self._max_s = max_s
        self._next_s = initial_s
        # Jitter is not security-sensitive; a seedable PRNG keeps tests reproducible.
        self._rng = rng or random.Random()  # noqa: S311

    def next_s(self) -> float:
        """The next delay (and advance the sequence)."""
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def reset(self) -> None:
        """Start again from ``initial_s`` (call after a success)."""
        self._next_s = self._initial_s
