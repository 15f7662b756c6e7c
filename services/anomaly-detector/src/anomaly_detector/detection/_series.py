"""Per-series streaming detector: downsampled pattern novelty, self-calibrated, with suppression."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from anomaly_detector.detection._errors import DetectorConfigError

_MIN_WINDOW = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesConfig:
    warmup_points: int = 600
    downsample: int = 0
    window: int = 8
    neighbours: int = 3
    memory_steps: int = 600
    calibration_steps: int = 600
    calibration_start: float = 0.5
    calibration_quantile: float = 1.0
    alert_novelty: float = 0.7
    suppress_points: int = 0
    quiet_scale: float = 0.1
    scales: str = "1"
    rearm: float = 0.0
    calib_skip_alert: int = 0
    mode: str = "new"
    suppress_fraction: float = 0.25
    calib: str = "ratio"
    xi_max: float = 0.0
    xi_min: float = 0.0
    decay: float = 0.0

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
        if self.downsample:
            return self.downsample
        return max(1, self.warmup_points // (13 * self.window))

    @property
    def suppress_for_points(self) -> int:
        return self.suppress_points or max(1, int(self.warmup_points * self.suppress_fraction))


@dataclass(frozen=True, slots=True)
class Score:
    timestamp: float
    value: float
    score: float
    is_anomaly: bool
    novelty: float = 0.0
    expected: float = math.nan
    contributions: dict[str, float] = field(default_factory=dict)


class _Scale:
    def __init__(self, cfg: SeriesConfig, factor: int) -> None:
        self.cfg = cfg
        self.factor = factor
        self.pending: list[float] = []
        self.ewma = math.nan
        self.steps = np.zeros(cfg.window)
        self.n_steps = 0
        self.patterns = np.zeros((cfg.memory_steps, cfg.window))
        self.n_patterns = 0
        self.calib = np.zeros(cfg.calibration_steps)
        self.n_calib = 0
        self.ref = 0.0

    def push(self, block: list[float]) -> float | None:
        """Add one base block; returns the novelty when this scale completes a step."""
        self.pending.extend(block)
        if len(self.pending) < self.factor * len(block):
            return None
        vals = self.pending
        mean = sum(vals) / len(vals)
        self.ewma = mean if math.isnan(self.ewma) else 0.5 * (self.ewma + mean)
        hi, lo = max(vals), min(vals)
        rep = hi if abs(hi - self.ewma) >= abs(lo - self.ewma) else lo
        self.pending = []
        self.steps = np.roll(self.steps, -1)
        self.steps[-1] = rep
        self.n_steps += 1
        if self.n_steps < self.cfg.window:
            return None
        return self._novelty(self.steps.copy())

    def _novelty(self, pattern: np.ndarray) -> float:
        cfg = self.cfg
        usable = min(self.n_patterns, cfg.memory_steps) - cfg.window
        m = cfg.memory_steps
        dist = 0.0
        if usable > 0:
            newest = (self.n_patterns - 1) % m
            skip = (newest - np.arange(cfg.window)) % m
            mask = np.ones(min(self.n_patterns, m), dtype=bool)
            mask[skip[skip < mask.shape[0]]] = False
            past = self.patterns[: mask.shape[0]][mask]
            diff = past - pattern
            sq = np.einsum("ij,ij->i", diff, diff)
            k = min(cfg.neighbours, sq.shape[0])
            idx = np.argpartition(sq, k - 1)[:k]
            dist = math.sqrt(float(sq[idx].mean()) / cfg.window)
        self.patterns[self.n_patterns % m] = pattern
        self.n_patterns += 1
        self.last_dist = dist
        n_cal = min(self.n_calib, cfg.calibration_steps)
        if usable <= 0 or n_cal < 10:
            return 0.0
        cal = self.calib[:n_cal]
        q = cfg.calibration_quantile
        if cfg.calib == "ratio":
            ref = float(cal.max()) if q >= 1.0 else float(np.quantile(cal, q))
            floor = 1e-9 * (abs(float(pattern.mean())) + 1.0)
            return min(dist / max(ref, floor), 1e6)
        u = float(np.quantile(cal, q))
        if dist <= u:
            # Below the tail threshold: empirical tail fraction.
            frac = (float(np.count_nonzero(cal >= dist)) + 1.0) / (n_cal + 1.0)
            return -math.log10(frac)
        exc = cal[cal > u] - u
        p_u = (exc.shape[0] + 1.0) / (n_cal + 1.0)
        floor = 1e-9 * (abs(float(pattern.mean())) + 1.0)
        if exc.shape[0] >= 2:
            m = float(exc.mean())
            v = float(exc.var())
            xi = 0.5 * (1.0 - m * m / v) if v > 0 else 0.0
            xi = min(max(xi, cfg.xi_min), cfg.xi_max)
            sigma = max(0.5 * m * (m * m / v + 1.0) if v > 0 else m, floor)
        else:
            xi = 0.0
            sigma = max(u, floor)
        y = (dist - u) / sigma
        if abs(xi) < 1e-6:
            logp = math.log10(p_u) - y / math.log(10.0)
        else:
            base = 1.0 + xi * y
            if base <= 1e-12:
                logp = math.log10(p_u) - 12.0
            else:
                logp = math.log10(p_u) - math.log10(base) / xi
        return min(-logp, 1e6)
    def learn_calib(self) -> None:
        self.calib[self.n_calib % self.cfg.calibration_steps] = self.last_dist
        self.n_calib += 1


class SeriesDetector:
    def __init__(self, config: SeriesConfig | None = None) -> None:
        self.config = config or SeriesConfig()
        cfg = self.config
        self._step = cfg.step_points
        self._block: list[float] = []
        self._scales = [_Scale(cfg, int(f)) for f in cfg.scales.split(",")]
        self._n_points = 0
        self._last_alert = -(10**18)
        self._last_alert_novelty = 0.0
        self._novelty = [0.0] * len(self._scales)
        from collections import deque
        self._recent: deque[tuple[int, float]] = deque()
        self._level = 0.0
        self._fired: deque[tuple[int, float]] = deque()

    @property
    def points_seen(self) -> int:
        return self._n_points

    @property
    def nbytes(self) -> int:
        return int(sum(s.steps.nbytes + s.patterns.nbytes + s.calib.nbytes for s in self._scales))

    def update(self, timestamp: float, value: float) -> Score:
        if not math.isfinite(value):
            return Score(timestamp, value, 0.0, is_anomaly=False)
        self._n_points += 1
        self._block.append(value)
        if len(self._block) < self._step:
            return Score(timestamp, value, 0.0, is_anomaly=False)
        block = self._block
        self._block = []
        fired = []
        for i, sc in enumerate(self._scales):
            nov = sc.push(block)
            if nov is not None:
                self._novelty[i] = nov
                fired.append(sc)
        if not fired:
            return Score(timestamp, value, 0.0, is_anomaly=False)
        cfg = self.config
        novelty = max(self._novelty[i] for i, sc in enumerate(self._scales) if sc in fired)
        score = novelty / (1.0 + novelty)
        warm = self._n_points > cfg.warmup_points
        since = self._n_points - self._last_alert
        suppressed = since < cfg.suppress_for_points
        if suppressed and cfg.rearm > 0 and novelty >= cfg.rearm * self._last_alert_novelty:
            suppressed = False
        if cfg.mode == "new":
            R = cfg.suppress_for_points
            while self._recent and self._n_points - self._recent[0][0] >= R:
                self._recent.popleft()
            if cfg.decay > 0:
                prev = self._level * math.exp(-(self._step) / (cfg.decay * R))
            else:
                prev = max((v for _, v in self._recent), default=0.0)
            top = novelty > prev
            while self._fired and self._n_points - self._fired[0][0] >= R:
                self._fired.popleft()
            fprev = max((v for _, v in self._fired), default=0.0)
            if top and novelty > cfg.rearm * fprev:
                self._fired.append((self._n_points, novelty))
            else:
                top = False
            while self._recent and self._recent[-1][1] <= novelty:
                self._recent.pop()
            self._recent.append((self._n_points, novelty))
            self._level = max(prev, novelty)
            is_anomaly = warm and top and novelty >= cfg.alert_novelty
            if not (warm and top):
                score = score * cfg.quiet_scale if warm else 0.0
        else:
            is_anomaly = warm and not suppressed and novelty >= cfg.alert_novelty
            if is_anomaly:
                self._last_alert = self._n_points
                self._last_alert_novelty = novelty
            else:
                score = score * cfg.quiet_scale if warm else 0.0
        if self._n_points > cfg.warmup_points * cfg.calibration_start:
            skip = cfg.calib_skip_alert and since < cfg.calib_skip_alert
            for sc in fired:
                if not skip:
                    sc.learn_calib()
        return Score(timestamp, value, score, is_anomaly, novelty, math.nan, {})
