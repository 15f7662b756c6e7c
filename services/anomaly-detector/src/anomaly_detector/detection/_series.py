"""Per-series streaming detector: downsampled pattern novelty, self-calibrated, with suppression."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from anomaly_detector.detection._errors import DetectorConfigError

# A pattern compared against the past needs at least two steps.
_MIN_WINDOW = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesConfig:
    """Knobs of :class:`SeriesDetector`; one set serves every series (no per-series tuning).

    Attributes:
        warmup_points: Points learned before any alert may fire (NAB's "probation").
        downsample: Raw points per downsampled step; 0 derives it from ``warmup_points`` so the
            warm-up holds about ``13 * window`` steps.
        window: Downsampled steps in one pattern (the unit compared against the past).
        neighbours: Nearest past patterns averaged into the distance (k of kNN); k > 1 keeps
            one lucky near-copy in a noisy series from hiding a change.
        memory_steps: Past patterns remembered (ring buffer; bounds memory per series).
        calibration_steps: Recent nearest-neighbour distances kept to calibrate novelty.
        calibration_start: Fraction of the warm-up after which distances enter the
            calibration (earlier ones are inflated by the near-empty memory).
        alert_novelty: Novelty that raises an alert (1.0 = as novel as the most novel pattern
            of the calibration period).
        suppress_points: Raw points after an alert during which no new alert fires; 0 derives
            it from ``warmup_points`` (a quarter of it).
        quiet_scale: Factor applied to the score of points that raise no alert, so the alert
            points rank first.
    """

    warmup_points: int = 600
    downsample: int = 0
    window: int = 8
    neighbours: int = 3
    memory_steps: int = 600
    calibration_steps: int = 600
    calibration_start: float = 0.5
    alert_novelty: float = 0.7
    suppress_points: int = 0
    quiet_scale: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "warmup_points": self.warmup_points >= 1,
            "downsample": self.downsample >= 0,
            "window": self.window >= _MIN_WINDOW,
            "neighbours": self.neighbours >= 1,
            "memory_steps": self.memory_steps >= self.window + self.neighbours,
            "calibration_steps": self.calibration_steps >= 1,
            "calibration_start": 0.0 <= self.calibration_start <= 1.0,
            "alert_novelty": self.alert_novelty > 0,
            "suppress_points": self.suppress_points >= 0,
            "quiet_scale": 0.0 <= self.quiet_scale <= 1.0,
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
        """Raw points of alert suppression after an alert."""
        return self.suppress_points or max(1, self.warmup_points // 4)


@dataclass(frozen=True, slots=True)
class Score:
    """The verdict on one point.

    Attributes:
        timestamp: The point's timestamp (seconds, as given).
        value: The point's value.
        score: Alert strength in [0, 1): ``novelty / (1 + novelty)`` at an alert, scaled down
            by ``quiet_scale`` elsewhere (0 between downsampled steps and during warm-up).
        is_anomaly: True when this point raises an alert (past warm-up, not suppressed).
        novelty: kNN distance of the current pattern over the largest distance of the
            calibration period (> 1: more novel than anything seen recently).
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
    survive downsampling); the last ``window`` steps form a pattern whose mean distance to its
    ``neighbours`` nearest remembered past patterns is the raw novelty (KNN-CAD's
    nonconformity, ARTime's "no category fits"). The distance is divided by the largest
    distance of the calibration period of the same series, so one set of knobs suits series of
    any scale and noise. After an alert, alerts are suppressed for ``suppress_for_points``:
    one incident, one alert. Memory is bounded by ``memory_steps`` and ``calibration_steps``.
    """

    def __init__(self, config: SeriesConfig | None = None) -> None:
        self.config = config or SeriesConfig()
        cfg = self.config
        self._step = cfg.step_points
        self._block: list[float] = []
        self._ewma = math.nan
        self._steps = np.zeros(cfg.window, dtype=np.float64)
        self._n_steps = 0
        self._patterns = np.zeros((cfg.memory_steps, cfg.window), dtype=np.float64)
        self._n_patterns = 0
        self._calib = np.zeros(cfg.calibration_steps, dtype=np.float64)
        self._n_calib = 0
        self._n_points = 0
        self._last_alert = -(10**18)

    @property
    def points_seen(self) -> int:
        """Raw points processed so far."""
        return self._n_points

    @property
    def nbytes(self) -> int:
        """Bytes held by the detector's buffers (bounded by the config)."""
        return int(self._steps.nbytes + self._patterns.nbytes + self._calib.nbytes)

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
        self._steps = np.roll(self._steps, -1)
        self._steps[-1] = rep
        self._n_steps += 1
        if self._n_steps < cfg.window:
            return Score(timestamp, value, 0.0, is_anomaly=False)
        pattern = self._steps
        novelty, expected = self._novelty(pattern)
        self._patterns[self._n_patterns % cfg.memory_steps] = pattern
        self._n_patterns += 1
        score = novelty / (1.0 + novelty)
        warm = self._n_points > cfg.warmup_points
        suppressed = self._n_points - self._last_alert < cfg.suppress_for_points
        is_anomaly = warm and not suppressed and novelty >= cfg.alert_novelty
        if is_anomaly:
            self._last_alert = self._n_points
        else:
            # Only alerts rank high: NAB (and an operator) values one early alert per incident.
            score = score * cfg.quiet_scale if warm else 0.0
        contributions = {"pattern_novelty": novelty, "step_value": rep, "expected": expected}
        return Score(timestamp, value, score, is_anomaly, novelty, expected, contributions)

    def _novelty(self, pattern: np.ndarray) -> tuple[float, float]:
        cfg = self.config
        # The newest `window` patterns overlap the current one: trivial matches, skip them.
        usable = min(self._n_patterns, cfg.memory_steps) - cfg.window
        if usable <= 0:
            return 0.0, math.nan
        newest = (self._n_patterns - 1) % cfg.memory_steps
        skip = (newest - np.arange(cfg.window)) % cfg.memory_steps
        mask = np.ones(min(self._n_patterns, cfg.memory_steps), dtype=bool)
        mask[skip[skip < mask.shape[0]]] = False
        past = self._patterns[: mask.shape[0]][mask]
        diff = past - pattern
        sq = np.einsum("ij,ij->i", diff, diff)
        k = min(cfg.neighbours, sq.shape[0])
        idx = np.argpartition(sq, k - 1)[:k]
        dist = math.sqrt(float(sq[idx].mean()) / cfg.window)
        expected = float(np.median(past[idx, -1]))
        n_cal = min(self._n_calib, cfg.calibration_steps)
        typical = float(self._calib[:n_cal].max()) if n_cal else 0.0
        if self._n_points > cfg.warmup_points * cfg.calibration_start:
            self._calib[self._n_calib % cfg.calibration_steps] = dist
            self._n_calib += 1
        # Tiny floor: a noiseless series (typical 0) makes any change infinitely novel, capped.
        floor = 1e-9 * (abs(float(pattern.mean())) + 1.0)
        return min(dist / max(typical, floor), 1e6), expected
