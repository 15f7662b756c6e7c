"""Seasonal residual: how far the recent points are from the same time in past periods."""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

from anomaly_detector.detection._errors import DetectorConfigError

# Timestamps looked at to learn the sampling interval (the median gap is robust to a few
# missing points).
_PROBE_POINTS = 32
# Ring slot never filled (no real bin index is this small).
_EMPTY = -(2**62)
# Period-over-period pairs needed before their spread is trusted.
_MIN_SPREAD_PAIRS = 8
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class SeasonalBaseline:
    """What the same time of the past periods says about a recent value (or span of values).

    Attributes:
        observed: The value compared (a span's mean for :meth:`SeasonalResidual.last_span`).
        expected: Median of the past periods' values at that time: what the season predicts.
        nearest: The past periods' value closest to ``observed`` (what the residual measures:
            one odd past period does not make the present look odd); with a tolerance, the
            closest point of their envelope within it.
        past: The past periods' values at that time, the latest period first (periods whose
            points are not held are left out).
        spread: Robust spread of a period-over-period difference, over the last period
            (``1.4826 * median |x(t) - x(t - period)|``); NaN with too few pairs.
        start_s: Start of the compared time (seconds; in the current period).
        end_s: End of it.
    """

    observed: float
    expected: float
    nearest: float
    past: tuple[float, ...]
    spread: float
    start_s: float
    end_s: float


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
        self._closed = _EMPTY
        self._gap_s = 0.0
        self._last_s = math.nan

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring of past points."""
        return 8 * len(self._ring)

    @property
    def slot_s(self) -> float:
        """Seconds one remembered value covers: the bin, or the sampling interval (0 unknown)."""
        return self.bin_s if self.binned else self._gap_s

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
        self._last_s = timestamp
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
        self._gap_s = gap
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
        self._closed = index
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

    # -- read-only views of the season (for explaining a verdict; never used in scoring) ----

    def last_span(self, *, tolerance: int = 0) -> SeasonalBaseline | None:
        """The span behind :attr:`residual`, against the same time of the past periods.

        The span is the last ``span_points`` points (binned: the last closed bins); its mean
        is ``observed``, each past period's mean over the same time is one of ``past``.

        Args:
            tolerance: Also compare with the span shifted by up to this many points (binned:
                bins) either way; ``nearest`` is then the closest the past periods came
                within that envelope (a surge a few minutes early or late is the usual one).

        Returns:
            The comparison; None before :attr:`ready` or when no past period holds the span.
        """
        if not self.ready:
            return None
        span = self._in.maxlen or 1
        if self.binned:
            end = self._closed
            start_s, end_s = (end - span + 1) * self.bin_s, (end + 1) * self.bin_s
        else:
            end = self._n - 1
            start_s, end_s = self._last_s - (span - 1) * self._gap_s, self._last_s
        indices = range(end - span + 1, end + 1)
        now = [self._held(i) for i in indices]
        if any(v is None for v in now):
            return None
        observed = math.fsum(v for v in now if v is not None) / span
        return self._compare(indices, observed, tolerance, start_s, end_s)

    def at_latest(self, value: float, *, tolerance: int = 0) -> SeasonalBaseline | None:
        """``value``, at the latest point's time, against the same time of the past periods.

        Args:
            value: The value to judge (typically the latest point itself).
            tolerance: Also compare with this many points (binned: bins) either side of the
                same time; ``nearest`` is then the closest the past periods came within that
                envelope (a daily surge a few minutes early or late is the usual surge).

        Returns:
            The comparison, or None when the season is off or no past period is held.
        """
        if not self._ring:
            return None
        if self.binned:
            index = self._bin
            start_s, end_s = index * self.bin_s, (index + 1) * self.bin_s
        else:
            index = self._n - 1
            start_s = end_s = self._last_s
        return self._compare(range(index, index + 1), value, tolerance, start_s, end_s)

    def _held(self, index: int) -> float | None:
        """The remembered value (or bin mean) with this index, if the ring still holds it."""
        ring = self._ring
        size = len(ring)
        if self.binned:
            return ring[index % size] if self._stamp[index % size] == index else None
        if index < 0 or index >= self._n or index <= self._n - 1 - size:
            return None
        return ring[index % size]

    def _compare(
        self, indices: range, observed: float, tolerance: int, start_s: float, end_s: float
    ) -> SeasonalBaseline | None:
        lag, span = self.lag_points, len(indices)
        past: list[float] = []
        nearest = math.nan
        for k in range(1, self.periods + 1):
            means: dict[int, float] = {}
            for shift in range(-tolerance, tolerance + 1):
                values = [self._held(i - k * lag + shift) for i in indices]
                if all(v is not None for v in values):
                    means[shift] = math.fsum(v for v in values if v is not None) / span
            if 0 not in means:
                continue
            past.append(means[0])
            # The closest the period came to `observed` within the tolerance (its envelope).
            close = min(max(observed, min(means.values())), max(means.values()))
            if math.isnan(nearest) or abs(close - observed) < abs(nearest - observed):
                nearest = close
        if not past:
            return None
        return SeasonalBaseline(
            observed=observed,
            expected=statistics.median(past),
            nearest=nearest,
            past=tuple(past),
            spread=self._spread(indices[-1]),
            start_s=start_s,
            end_s=end_s,
        )

    def _spread(self, end: int) -> float:
        lag = self.lag_points
        diffs: list[float] = []
        for i in range(end - lag + 1, end + 1):
            now, before = self._held(i), self._held(i - lag)
            if now is not None and before is not None:
                diffs.append(abs(now - before))
        if len(diffs) < _MIN_SPREAD_PAIRS:
            return math.nan
        return _MAD_TO_SIGMA * statistics.median(diffs)
