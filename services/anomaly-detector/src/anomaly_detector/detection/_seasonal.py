"""Seasonal residual: how far the recent points are from the same time in past periods."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from anomaly_detector.detection._errors import DetectorConfigError

# Timestamps looked at to learn the sampling interval (the median gap is robust to a few
# missing points).
_PROBE_POINTS = 32
# Ring slot never filled (no real bin index is this small).
_EMPTY = -(2**62)


class SeasonalResidual:
    """Mean absolute difference between recent points and the same time of past periods.

    The seasonal lag in points comes from the timestamps (``period_s`` over the median gap of
    the first points). Each point is compared with the points exactly 1..``periods`` lags
    before it; the smallest absolute difference counts (one unusual past day does not make
    today look odd), and its mean over the last ``span_points`` points is the residual. The
    same is measured half a period off (``anti``): on a series without that seasonality both
    are alike, on a seasonal one the in-phase residual is far smaller, which is how a caller
    tells whether the season explains the series at all.

    Memory is bounded: the ring of past points holds at most ``max_points`` values. When the
    raw points of ``periods`` periods do not fit (a 10 s cadence needs 25 920 for three days)
    and ``bin_s`` is coarser than the cadence, the series is downsampled to ``bin_s`` means
    (time bins ``floor(t / bin_s)``: 5-minute means keep three days in 865 values) and
    compared bin by bin; ``span_points`` then covers the same time in bins (at least one). Bins
    are placed by their timestamp, so missing points or a gap (a restart) do not shift the
    phase; a past bin that was never filled is skipped. A cadence at which the raw points fit
    is never binned (so 5-minute data such as NAB's is treated exactly as before). A series
    that fits neither way is left without seasonal residual (``ready`` stays False).

    :attr:`version` counts the residual's updates: binned, it moves once per closed bin (a
    bin is closed by the first point of a later one), so a caller calibrates once per bin.

    Args:
        period_s: The season's length in seconds (one day by default in the caller).
        periods: Past periods compared against.
        span_points: Points averaged into the residual (a short blip is diluted, a sustained
            departure from the season is not).
        max_points: Cap on the remembered points (or bins).
        bin_s: Length of the bins when the raw points do not fit; 0 never bins.
    """

    def __init__(
        self,
        *,
        period_s: float,
        periods: int,
        span_points: int,
        max_points: int,
        bin_s: float = 0.0,
    ) -> None:
        if period_s <= 0 or periods < 1 or span_points < 1 or max_points < 1 or bin_s < 0:
            raise DetectorConfigError("invalid seasonal residual knobs", variable="period_s")
        self.period_s = period_s
        self.periods = periods
        self.span_points = span_points
        self.max_points = max_points
        self.bin_s = bin_s
        self.lag_points = 0
        #: Whether the series is compared in ``bin_s`` means (its cadence is too fine).
        self.binned = False
        self.version = 0
        self._probe: list[tuple[float, float]] = []
        # A list, not an array: per-point scalar reads of Python floats are several times
        # cheaper than numpy scalar indexing.
        self._ring: list[float] = []
        self._n = 0
        self._disabled = False
        self._in: deque[float] = deque(maxlen=span_points)
        self._anti: deque[float] = deque(maxlen=span_points)
        # Binned mode: the bin index each ring slot holds, and the open bin.
        self._stamp: list[int] = []
        self._bin = _EMPTY
        self._bin_sum = 0.0
        self._bin_n = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring of past points."""
        return 8 * len(self._ring)

    @property
    def ready(self) -> bool:
        """True once a full span of points has been compared with at least one period."""
        return len(self._in) == self._in.maxlen

    @property
    def residual(self) -> float:
        """Mean in-phase absolute difference over the last ``span_points`` points."""
        return math.fsum(self._in) / len(self._in) if self.ready else math.nan

    @property
    def anti_residual(self) -> float:
        """The same, half a period off: the residual a season-free series would show."""
        return math.fsum(self._anti) / len(self._anti) if self.ready else math.nan

    def update(self, timestamp: float, value: float) -> None:
        """Learn one point (and its comparison with the past periods)."""
        if self._disabled:
            return
        if not self._ring:
            self._probe.append((timestamp, value))
            if len(self._probe) >= _PROBE_POINTS:
                self._start()
            return
        if self.binned:
            self._add_to_bin(timestamp, value)
        else:
            self._push(value)

    def _start(self) -> None:
        ts = np.array([t for t, _ in self._probe])
        gap = float(np.median(np.diff(ts)))
        lag = round(self.period_s / gap) if gap > 0 else 0
        size = self.periods * lag + 1
        probe, self._probe = self._probe, []
        if lag >= 2 * self.span_points and size <= self.max_points:
            self.lag_points = lag
            self._ring = [0.0] * size
            for _, v in probe:
                self._push(v)
            return
        if gap > 0 and self.bin_s > gap:
            # Too fine a cadence for raw points: compare bin means instead.
            lag = round(self.period_s / self.bin_s)
            span = max(1, math.ceil(self.span_points * gap / self.bin_s))
            size = self.periods * lag + 1
            if lag >= 2 * span and size <= self.max_points:
                self.binned = True
                self.lag_points = lag
                self._ring = [0.0] * size
                self._stamp = [_EMPTY] * size
                self._in = deque(maxlen=span)
                self._anti = deque(maxlen=span)
                for t, v in probe:
                    self._add_to_bin(t, v)
                return
        # No usable season at this cadence (or it would not fit in bounded memory).
        self._disabled = True

    def _add_to_bin(self, timestamp: float, value: float) -> None:
        index = math.floor(timestamp / self.bin_s)
        if index > self._bin:
            if self._bin_n:
                self._close_bin(self._bin, self._bin_sum / self._bin_n)
            self._bin, self._bin_sum, self._bin_n = index, 0.0, 0
        # A late point (clock step back) joins the open bin rather than rewrite the past.
        self._bin_sum += value
        self._bin_n += 1

    def _close_bin(self, index: int, mean: float) -> None:
        ring, stamp, lag = self._ring, self._stamp, self.lag_points
        size = len(ring)
        ring[index % size] = mean
        stamp[index % size] = index
        best = math.inf
        anti = math.inf
        half = lag // 2
        for k in range(1, self.periods + 1):
            back = index - k * lag
            if stamp[back % size] == back:
                best = min(best, abs(mean - ring[back % size]))
            back += half
            if stamp[back % size] == back:
                anti = min(anti, abs(mean - ring[back % size]))
        if math.isfinite(best) and math.isfinite(anti):
            self._in.append(best)
            self._anti.append(anti)
            self.version += 1

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
        self.version += 1
