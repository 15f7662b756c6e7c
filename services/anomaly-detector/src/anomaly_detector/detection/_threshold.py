"""A threshold that tunes itself from the score distribution and from operator feedback."""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

from anomaly_detector.detection._errors import DetectorConfigError


class Feedback(StrEnum):
    """Operator feedback on an alert (``backbone anomaly feedback <id> --false-positive``)."""

    FALSE_POSITIVE = "false_positive"
    MISSED = "missed"


class AdaptiveThreshold:
    """Alert cut = the ``1 - target_rate`` quantile of recent scores, moved by feedback.

    The quantile keeps the alert rate near ``target_rate`` whatever the score scale; operator
    feedback then shifts it: a false positive lowers the target rate and lifts the cut above the
    offending score, a missed anomaly raises the rate and drops the cut below the missed score.

    Args:
        target_rate: Wanted fraction of scores at or above the cut.
        initial: The cut until ``min_samples`` scores have been seen.
        window: Recent scores kept (bounded memory).
        min_samples: Scores needed before the quantile is trusted.
        step: Multiplicative change of ``target_rate`` per feedback (0 < step < 1).
        floor: Lowest cut ever used (keeps a quiet series from alerting on noise).
        ceiling: Highest cut ever used (keeps feedback from silencing a series for good).
    """

    def __init__(
        self,
        *,
        target_rate: float = 0.01,
        initial: float = 0.5,
        window: int = 2048,
        min_samples: int = 64,
        step: float = 0.2,
        floor: float = 0.0,
        ceiling: float = 1.0,
    ) -> None:
        if not 0.0 < target_rate < 1.0:
            raise DetectorConfigError("target_rate must be in (0, 1)", variable="target_rate")
        if not 0.0 < step < 1.0:
            raise DetectorConfigError("step must be in (0, 1)", variable="step")
        if window < 1 or min_samples < 1:
            raise DetectorConfigError("window and min_samples must be >= 1", variable="window")
        if floor > ceiling:
            raise DetectorConfigError("floor must not exceed ceiling", variable="floor")
        self.target_rate = target_rate
        self.initial = initial
        self.step = step
        self.floor = floor
        self.ceiling = ceiling
        self.min_samples = min_samples
        self._scores = np.zeros(window, dtype=np.float64)
        self._n = 0
        self._offset = 0.0
        # The quantile only changes when a score is learned or the target rate moves, while
        # the cut is read before every judgement: compute it once per state.
        self._base_key: tuple[int, float] = (-1, math.nan)
        self._base_value = initial

    def _base(self) -> float:
        key = (self._n, self.target_rate)
        if key != self._base_key:
            n = min(self._n, self._scores.shape[0])
            if n < self.min_samples:
                self._base_value = self.initial
            else:
                self._base_value = float(np.quantile(self._scores[:n], 1.0 - self.target_rate))
            self._base_key = key
        return self._base_value

    @property
    def value(self) -> float:
        """The current cut: scores at or above it are anomalies."""
        return float(min(max(self._base() + self._offset, self.floor), self.ceiling))

    def observe(self, score: float) -> bool:
        """Judge ``score`` against the current cut, then learn it.

        Returns:
            True when ``score`` is at or above the cut in force before it was learned.
        """
        hit = score >= self.value
        self._scores[self._n % self._scores.shape[0]] = score
        self._n += 1
        return hit

    def feedback(self, kind: Feedback | str, *, score: float | None = None) -> float:
        """Move the cut after operator feedback.

        Args:
            kind: ``"false_positive"`` (alert was noise) or ``"missed"`` (an anomaly got no
                alert).
            score: The score of the point concerned, when known; the cut is moved past it.

        Returns:
            The new cut.
        """
        kind = Feedback(kind)
        before = self.value
        if kind is Feedback.FALSE_POSITIVE:
            self.target_rate = max(self.target_rate * (1.0 - self.step), 1e-6)
            target = max(before, score if score is not None else before)
            margin = self.step * max(1.0 - target, 1e-3)
            # Place the *unclamped* cut: relative to the clamped value, a cut held up by the
            # floor would not move past the score at all.
            self._offset = target + margin - self._base()
        else:
            self.target_rate = min(self.target_rate / (1.0 - self.step), 0.5)
            target = min(before, score if score is not None else before)
            margin = self.step * max(target, 1e-3)
            self._offset = target - margin - self._base()
        return self.value
