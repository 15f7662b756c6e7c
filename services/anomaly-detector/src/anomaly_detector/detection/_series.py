"""Per-series streaming detector: downsampled pattern novelty, tail-calibrated, refractory."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from anomaly_detector.detection._errors import DetectorConfigError
from anomaly_detector.detection._seasonal import SeasonalResidual

# A pattern compared against the past needs at least two steps.
_MIN_WINDOW = 2
# Distances needed before the tail model is trusted (below this no point is novel).
_MIN_CALIBRATION = 10
# Cap on novelty (-log10 of the tail probability): a noiseless series makes any change
# infinitely improbable.
_MAX_NOVELTY = 1e6
_LN10 = math.log(10.0)
# The tail model needs a tail: its threshold sits at or above the median distance.
_MIN_TAIL_QUANTILE = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesConfig:
    """Knobs of :class:`SeriesDetector`; one set serves every series (no per-series tuning).

    Attributes:
        warmup_points: Points learned before any alert may fire (NAB's "probation").
        downsample: Raw points per downsampled step; 0 derives it from ``warmup_points`` so the
            warm-up holds about ``13 * window`` steps.
        window: Downsampled steps in one pattern (the unit compared against the past).
        neighbours: Nearest past patterns averaged into the distance (k of kNN); k > 1 keeps
            a few lucky near-copies in a noisy series from hiding a change.
        memory_steps: Past patterns remembered (ring buffer; bounds memory per series).
        calibration_steps: Recent nearest-neighbour distances kept to calibrate novelty.
        calibration_start: Fraction of the warm-up after which distances enter the
            calibration (earlier ones are inflated by the near-empty memory).
        tail_quantile: Quantile of the calibration distances above which their tail is
            modelled (peaks over threshold, exponential tail fitted to the excesses).
        alert_novelty: Novelty (``-log10`` of the tail probability of the distance) that raises
            an alert; the default is the cut that maximises the NAB standard profile.
        suppress_points: Raw points of the refractory period after a local peak of novelty; 0
            derives it from ``warmup_points`` (``suppress_fraction`` of it).
        suppress_fraction: Refractory period as a fraction of ``warmup_points`` when
            ``suppress_points`` is 0.
        rearm_factor: Within the refractory period a new peak must exceed every recent novelty
            and be this many times the previous peak to count (one incident, one alert; a
            clearly worse second phase still alerts).
        quiet_scale: Factor applied to the score of points that are no peak, so the peaks rank
            first.
        season_s: Length of the season in seconds (a day: metrics follow the working day);
            0 turns the seasonal residual off. The lag in points comes from the timestamps.
        season_periods: Past periods a point is compared with (the closest counts, so one
            odd past day does not make today look odd).
        season_span_steps: Downsampled steps over which the seasonal residual is averaged:
            only a sustained departure from the season counts (a blip is the kNN's job).
        season_max_points: Cap on the raw points remembered for the season (bounded
            memory); a cadence whose ``season_periods`` periods need more is compared in
            ``season_bin_s`` means instead, or goes without if even those do not fit.
        season_bin_s: Bin length (seconds) of that downsampling: 5-minute means keep three
            days of a 10 s series in 865 values. Cadences whose raw points fit are never
            binned. 0 turns binning off.
        season_gate: The seasonal novelty counts only while the series' typical in-phase
            residual is below this fraction of its half-period-off residual (the season
            explains the series); otherwise it would add noise alerts.
    """

    warmup_points: int = 600
    downsample: int = 0
    window: int = 8
    neighbours: int = 5
    memory_steps: int = 600
    calibration_steps: int = 600
    calibration_start: float = 0.5
    tail_quantile: float = 0.95
    alert_novelty: float = 1.2
    suppress_points: int = 0
    suppress_fraction: float = 0.15
    rearm_factor: float = 1.5
    quiet_scale: float = 0.1
    season_s: float = 86400.0
    season_periods: int = 3
    season_span_steps: int = 16
    season_max_points: int = 4096
    season_bin_s: float = 300.0
    season_gate: float = 0.3

    def __post_init__(self) -> None:
        checks = {
            "warmup_points": self.warmup_points >= 1,
            "downsample": self.downsample >= 0,
            "window": self.window >= _MIN_WINDOW,
            "neighbours": self.neighbours >= 1,
            "memory_steps": self.memory_steps >= self.window + self.neighbours,
            "calibration_steps": self.calibration_steps >= _MIN_CALIBRATION,
            "calibration_start": 0.0 <= self.calibration_start <= 1.0,
            "tail_quantile": _MIN_TAIL_QUANTILE <= self.tail_quantile < 1.0,
            "alert_novelty": self.alert_novelty > 0,
            "suppress_points": self.suppress_points >= 0,
            "suppress_fraction": 0.0 < self.suppress_fraction <= 1.0,
            "rearm_factor": self.rearm_factor >= 1.0,
            "quiet_scale": 0.0 <= self.quiet_scale <= 1.0,
            "season_s": self.season_s >= 0.0,
            "season_periods": self.season_periods >= 1,
            "season_span_steps": self.season_span_steps >= 1,
            "season_max_points": self.season_max_points >= 1,
            "season_bin_s": self.season_bin_s >= 0.0,
            "season_gate": 0.0 < self.season_gate <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise DetectorConfigError(f"invalid SeriesConfig.{name}", variable=name)

    @property
    def step_points(self) -> int:
        """Raw points per downsampled step."""
        if self.downsample:
            return self.downsample
        return max(1, self.warmup_points // (13 * self.window))

    @property
    def suppress_for_points(self) -> int:
        """Raw points of the refractory period after a peak of novelty."""
        return self.suppress_points or max(1, int(self.warmup_points * self.suppress_fraction))


@dataclass(frozen=True, slots=True)
class Score:
    """The verdict on one point.

    Attributes:
        timestamp: The point's timestamp (seconds, as given).
        value: The point's value.
        score: Alert strength in [0, 1): ``novelty / (1 + novelty)`` at a peak of novelty,
            scaled down by ``quiet_scale`` elsewhere (0 between downsampled steps and during
            warm-up).
        is_anomaly: True when this point raises an alert (past warm-up, a peak outside the
            refractory period, novelty at least ``alert_novelty``).
        novelty: ``-log10`` of the probability, under the series' own recent distances, of a
            kNN distance at least this large (1 = one in ten, 3 = one in a thousand); the
            seasonal residual's, when that is larger.
        expected: The median of the current pattern's nearest past patterns' last step: what
            the past suggests this step should look like.
        contributions: Named parts of the verdict, for root-cause hints.
    """

    timestamp: float
    value: float
    score: float
    is_anomaly: bool
    novelty: float = 0.0
    expected: float = math.nan
    contributions: dict[str, float] = field(default_factory=dict)


class SeriesDetector:
    """Causal anomaly detector for one univariate series.

    Every ``step_points`` raw points the block is reduced to its most extreme value (so spikes
    survive downsampling); the last ``window`` steps form a pattern whose mean squared distance
    to its ``neighbours`` nearest remembered past patterns is the raw nonconformity (KNN-CAD's,
    ARTime's "no category fits"). The distance is turned into a tail probability under the
    series' own recent distances: empirical below the ``tail_quantile``, an exponential tail
    fitted to the excesses above it (peaks over threshold, as in SPOT), so noisy and quiet
    series of any scale share one cut, and one huge past spike does not blind the detector to
    later, smaller changes. Only peaks count: a point must beat every novelty of the last
    ``suppress_for_points`` points and ``rearm_factor`` times the previous peak (a refractory
    period that adapts to the series' own noise). Memory is bounded by ``memory_steps`` and
    ``calibration_steps``.

    A second, seasonal opinion covers what a context-free pattern match cannot see (a daily
    surge that does not come looks like an ordinary quiet night): the mean absolute
    difference of the last ``season_span_steps`` steps from the same time of the previous
    ``season_periods`` periods (:class:`SeasonalResidual`), calibrated the same way on its own
    history. It takes part only while the series is seasonal, and the novelty is the larger
    of the two.
    """

    def __init__(self, config: SeriesConfig | None = None) -> None:
        self.config = config or SeriesConfig()
        cfg = self.config
        self._step = cfg.step_points
        self._refractory = cfg.suppress_for_points
        self._block: list[float] = []
        self._ewma = math.nan
        self._steps = np.zeros(cfg.window, dtype=np.float64)
        self._n_steps = 0
        self._patterns = np.zeros((cfg.memory_steps, cfg.window), dtype=np.float64)
        self._n_patterns = 0
        self._calib = np.zeros(cfg.calibration_steps, dtype=np.float64)
        self._n_calib = 0
        self._season = (
            SeasonalResidual(
                period_s=cfg.season_s,
                periods=cfg.season_periods,
                span_points=cfg.season_span_steps * self._step,
                max_points=cfg.season_max_points,
                bin_s=cfg.season_bin_s,
            )
            if cfg.season_s > 0
            else None
        )
        self._scalib = np.zeros(cfg.calibration_steps, dtype=np.float64)
        self._acalib = np.zeros(cfg.calibration_steps, dtype=np.float64)
        self._n_scalib = 0
        self._seasonal = False
        self._season_version = 0
        self._season_novelty = 0.0
        self._n_points = 0
        self._overlap = np.arange(cfg.window)
        # Monotone (decreasing) queue of recent novelties: its head is the refractory maximum.
        self._recent: deque[tuple[int, float]] = deque()
        self._peaks: deque[tuple[int, float]] = deque()

    @property
    def points_seen(self) -> int:
        """Raw points processed so far."""
        return self._n_points

    @property
    def season(self) -> SeasonalResidual | None:
        """The seasonal residual behind ``seasonal_novelty`` (None when ``season_s`` is 0).

        Read it to explain a verdict (:meth:`SeasonalResidual.last_span`,
        :meth:`SeasonalResidual.at_latest`); feeding it is the detector's job.
        """
        return self._season

    @property
    def seasonal(self) -> bool:
        """Whether the season explains this series (the gate the seasonal novelty needs)."""
        return self._seasonal and self._season is not None and self._season.ready

    @property
    def nbytes(self) -> int:
        """Bytes held by the detector's buffers (bounded by the config)."""
        held = self._steps.nbytes + self._patterns.nbytes + self._calib.nbytes
        held += self._scalib.nbytes + self._acalib.nbytes
        return int(held + (self._season.nbytes if self._season else 0))

    def update(self, timestamp: float, value: float) -> Score:
        """Score one point using only the past, then learn it.

        Args:
            timestamp: The point's timestamp in seconds (echoed back only).
            value: The observed value; a non-finite value is scored 0 and not learned.

        Returns:
            The point's :class:`Score`.
        """
        if not math.isfinite(value):
            return Score(timestamp, value, 0.0, is_anomaly=False)
        self._n_points += 1
        if self._season is not None:
            self._season.update(timestamp, value)
        self._block.append(value)
        if len(self._block) < self._step:
            return Score(timestamp, value, 0.0, is_anomaly=False)
        rep = self._reduce_block()
        self._block.clear()
        return self._score_step(timestamp, value, rep)

    def _reduce_block(self) -> float:
        block = self._block
        mean = sum(block) / len(block)
        self._ewma = mean if math.isnan(self._ewma) else 0.5 * (self._ewma + mean)
        hi, lo = max(block), min(block)
        return hi if abs(hi - self._ewma) >= abs(lo - self._ewma) else lo

    def _score_step(self, timestamp: float, value: float, rep: float) -> Score:
        cfg = self.config
        self._steps[:-1] = self._steps[1:]
        self._steps[-1] = rep
        self._n_steps += 1
        if self._n_steps < cfg.window:
            return Score(timestamp, value, 0.0, is_anomaly=False)
        pattern = self._steps.copy()
        dist, expected, usable = self._distance(pattern)
        own = self._calibrated(dist, pattern, self._calib, self._n_calib) if usable else 0.0
        seasonal = self._seasonal_novelty(pattern)
        novelty = max(own, seasonal)
        self._patterns[self._n_patterns % cfg.memory_steps] = pattern
        self._n_patterns += 1
        if usable and self._n_points > cfg.warmup_points * cfg.calibration_start:
            self._calib[self._n_calib % cfg.calibration_steps] = dist
            self._n_calib += 1
        peak = self._is_peak(novelty)
        warm = self._n_points > cfg.warmup_points
        score = novelty / (1.0 + novelty)
        is_anomaly = warm and peak and novelty >= cfg.alert_novelty
        if not (warm and peak):
            # Only peaks rank high: NAB (and an operator) values one early alert per incident.
            score = score * cfg.quiet_scale if warm else 0.0
        contributions = {
            "pattern_novelty": own,
            "seasonal_novelty": seasonal,
            "pattern_distance": dist,
            "step_value": rep,
            "expected": expected,
        }
        return Score(timestamp, value, score, is_anomaly, novelty, expected, contributions)

    def _is_peak(self, novelty: float) -> bool:
        now, horizon = self._n_points, self._refractory
        recent, peaks = self._recent, self._peaks
        while recent and now - recent[0][0] >= horizon:
            recent.popleft()
        while peaks and now - peaks[0][0] >= horizon:
            peaks.popleft()
        beats_recent = not recent or novelty > recent[0][1]
        while recent and recent[-1][1] <= novelty:
            recent.pop()
        recent.append((now, novelty))
        last_peak = peaks[-1][1] if peaks else 0.0
        peak = beats_recent and novelty > 0.0 and novelty > self.config.rearm_factor * last_peak
        if peak:
            peaks.append((now, novelty))
        return peak

    def _distance(self, pattern: np.ndarray) -> tuple[float, float, bool]:
        cfg = self.config
        held = min(self._n_patterns, cfg.memory_steps)
        # The newest `window` patterns overlap the current one: trivial matches, skip them.
        if held - cfg.window <= 0:
            return 0.0, math.nan, False
        past = self._patterns[:held]
        diff = past - pattern
        sq = np.einsum("ij,ij->i", diff, diff)
        newest = (self._n_patterns - 1) % cfg.memory_steps
        sq[(newest - self._overlap) % cfg.memory_steps] = np.inf
        k = min(cfg.neighbours, held - cfg.window)
        idx = np.argpartition(sq, k - 1)[:k]
        dist = math.sqrt(float(sq[idx].mean()) / cfg.window)
        return dist, float(np.median(past[idx, -1])), True

    def _seasonal_novelty(self, pattern: np.ndarray) -> float:
        cfg = self.config
        season = self._season
        if season is None or not season.ready:
            return 0.0
        if season.version == self._season_version:
            # No new comparison since the last step (a binned season moves once per bin):
            # the opinion holds, and the calibration must not count one residual many times.
            return self._season_novelty
        self._season_version = season.version
        resid, anti = season.residual, season.anti_residual
        n_s = min(self._n_scalib, cfg.calibration_steps)
        novelty = 0.0
        if n_s >= _MIN_CALIBRATION:
            if self._n_scalib % cfg.season_span_steps == 0 or n_s == _MIN_CALIBRATION:
                # Only a series the season explains (in-phase residual well below the
                # half-period-off one) is judged against its season. The verdict moves
                # slowly: refresh it once per span, not every step (two medians cost more
                # than the rest of a step).
                typical = float(np.median(self._scalib[:n_s]))
                self._seasonal = typical < cfg.season_gate * float(np.median(self._acalib[:n_s]))
            if self._seasonal:
                novelty = self._calibrated(resid, pattern, self._scalib, self._n_scalib)
        if self._n_points > cfg.warmup_points * cfg.calibration_start:
            slot = self._n_scalib % cfg.calibration_steps
            self._scalib[slot] = resid
            self._acalib[slot] = anti
            self._n_scalib += 1
        self._season_novelty = novelty
        return novelty

    def _calibrated(
        self, dist: float, pattern: np.ndarray, calib: np.ndarray, n_calib: int
    ) -> float:
        cfg = self.config
        n_cal = min(n_calib, cfg.calibration_steps)
        if n_cal < _MIN_CALIBRATION:
            return 0.0
        cal = calib[:n_cal]
        # The tail threshold: the tail_quantile of the distances, linearly interpolated.
        pos = cfg.tail_quantile * (n_cal - 1)
        kth = int(pos)
        ordered = np.partition(cal, (kth, min(kth + 1, n_cal - 1)))
        u = float(ordered[kth])
        if kth + 1 < n_cal:
            u += (pos - kth) * (float(ordered[kth + 1]) - u)
        if dist <= u:
            # Body of the distribution: the empirical (conformal) tail fraction.
            return -math.log10((float(np.count_nonzero(cal >= dist)) + 1.0) / (n_cal + 1.0))
        excess = ordered[kth + 1 :] - u
        excess = excess[excess > 0]
        log_p_u = math.log10((excess.shape[0] + 1.0) / (n_cal + 1.0))
        # Tiny floor: a noiseless series (all distances 0) makes any change maximally novel.
        floor = 1e-9 * (abs(float(pattern.mean())) + 1.0)
        scale = self._tail_scale(excess, u, floor)
        return min(-log_p_u + (dist - u) / scale / _LN10, _MAX_NOVELTY)

    @staticmethod
    def _tail_scale(excess: np.ndarray, u: float, floor: float) -> float:
        if excess.shape[0] < _MIN_WINDOW:
            return max(u, floor)
        mean = float(excess.mean())
        var = float(excess.var())
        # Method-of-moments scale of a generalised Pareto tail with the shape held at 0.
        scale = 0.5 * mean * (mean * mean / var + 1.0) if var > 0 else mean
        return max(scale, floor)
