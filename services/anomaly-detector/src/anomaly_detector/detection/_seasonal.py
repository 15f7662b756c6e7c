"""Seasonal residual: how far the recent points are from the same time in past periods."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from anomaly_detector.detection._errors import DetectorConfigError

# Timestamps looked at to learn the sampling interval (the median gap is robust to a few
# missing points).
_PROBE_POINTS = 32


class SeasonalResidual:
    """Mean absolute difference between recent points and the same time of past periods.

    The seasonal lag in points comes from the timestamps (``period_s`` over the median gap of
    the first points). Each point is compared with the points exactly 1..``periods`` lags
    before it; the smallest absolute difference counts (one unusual past day does not make
    today look odd), and its mean over the last ``span_points`` points is the residual. The
    same is measured half a period off (``anti``): on a series without that seasonality both
    are alike, on a seasonal one the in-phase residual is far smaller, which is how a caller
    tells whether the season explains the series at all.

    Memory is bounded: the ring of past points holds at most ``max_points`` values, and a
    series whose period needs more is left without seasonal residual (``ready`` stays False).

    Args:
        period_s: The season's length in seconds (one day by default in the caller).
        periods: Past periods compared against.
        span_points: Points averaged into the residual (a short blip is diluted, a sustained
            departure from the season is not).
        max_points: Cap on the remembered points.
    """

    def __init__(self, *, period_s: float, periods: int, span_points: int, max_points: int) -> None:
        if period_s <= 0 or periods < 1 or span_points < 1 or max_points < 1:
            raise DetectorConfigError("invalid seasonal residual knobs", variable="period_s")
        self.period_s = period_s
        self.periods = periods
        self.span_points = span_points
        self.max_points = max_points
        self.lag_points = 0
        self._probe: list[tuple[float, float]] = []
        # A list, not an array: per-point scalar reads of Python floats are several times
        # cheaper than numpy scalar indexing.
        self._ring: list[float] = []
        self._n = 0
        self._disabled = False
        self._in: deque[float] = deque(maxlen=span_points)
        self._anti: deque[float] = deque(maxlen=span_points)

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring of past points."""
        return 8 * len(self._ring)

    @property
    def ready(self) -> bool:
        """True once a full span of points has been compared with at least one period."""
        return len(self._in) == self.span_points

    @property
    def residual(self) -> float:
        """Mean in-phase absolute difference over the last ``span_points`` points."""
        return math.fsum(self._in) / self.span_points if self.ready else math.nan

    @property
    def anti_residual(self) -> float:
        """The same, half a period off: the residual a season-free series would show."""
        return math.fsum(self._anti) / self.span_points if self.ready else math.nan

    def update(self, timestamp: float, value: float) -> None:
        """Learn one point (and its comparison with the past periods)."""
        if self._disabled:
            return
        if not self._ring:
            self._probe.append((timestamp, value))
            if len(self._probe) >= _PROBE_POINTS:
                self._start()
            return
        self._push(value)

    def _start(self) -> None:
        ts = np.array([t for t, _ in self._probe])
        gap = float(np.median(np.diff(ts)))
        lag = round(self.period_s / gap) if gap > 0 else 0
        size = self.periods * lag + 1
        if lag < 2 * self.span_points or size > self.max_points:
            # No usable season at this cadence (or it would not fit in bounded memory).
            self._disabled = True
            self._probe.clear()
            return
        self.lag_points = lag
        self._ring = [0.0] * size
        probe, self._probe = self._probe, []
        for _, v in probe:
            self._push(v)

    def _push(self, value: float) -> None:
        ring, lag = self._ring, self.lag_points
        size = len(ring)
        n = self._n
        ring[n % size] = float(value)
        self._n = n + 1
        if n < lag:
            return
        best = math.inf
        anti = math.inf
        half = lag // 2
        for k in range(1, self.periods + 1):
            back = k * lag
            if back <= n:
                best = min(best, abs(value - ring[(n - back) % size]))
            back -= half
            if back <= n:
                anti = min(anti, abs(value - ring[(n - back) % size]))
        self._in.append(best)
        self._anti.append(anti)
