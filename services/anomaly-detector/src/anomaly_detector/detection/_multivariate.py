"""Multivariate detector over one entity's metric vector: IsolationForest on a sliding window."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sklearn.ensemble import IsolationForest

from anomaly_detector.detection._errors import DetectionError, DetectorConfigError
from anomaly_detector.detection._threshold import AdaptiveThreshold

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(frozen=True, slots=True)
class MultivariateScore:
    """The verdict on one metric vector.

    Attributes:
        timestamp: The vector's timestamp (seconds, as given).
        score: Anomaly score in [0, 1]: the larger of the IsolationForest score (0.5 ~
            ordinary, near 1 isolated fast) and the squashed largest per-metric robust z-score;
            0 until the first fit.
        is_anomaly: True when the score is at or above the adaptive threshold.
        threshold: The cut in force for this vector.
        contributions: Per metric, the robust z-score against the window (root-cause hint).
        top_features: Metrics sorted by contribution, largest first.
    """

    timestamp: float
    score: float
    is_anomaly: bool
    threshold: float
    contributions: dict[str, float] = field(default_factory=dict)
    top_features: tuple[str, ...] = ()


class MultivariateDetector:
    """IsolationForest refit every ``refit_every`` vectors on the last ``window`` vectors.

    Each vector is scored by the model fit on strictly earlier vectors (causal), then joins the
    window. The alert cut is an :class:`AdaptiveThreshold` (give it operator feedback).

    Args:
        features: The metric names, in the order vectors are read.
        window: Vectors kept for refitting (bounded memory).
        refit_every: Vectors between refits (bounds the amortised cost per vector).
        min_fit: Vectors needed before the first fit.
        n_estimators: Trees per forest.
        seed: Random seed of the forest (deterministic results).
        threshold: The alert cut; defaults to a 1 % target rate with a 0.6 floor.
        z_half: Robust z-score of one metric that alone yields score 0.5.
    """

    def __init__(
        self,
        features: Sequence[str],
        *,
        window: int = 512,
        refit_every: int = 64,
        min_fit: int = 64,
        n_estimators: int = 50,
        seed: int = 0,
        threshold: AdaptiveThreshold | None = None,
        z_half: float = 8.0,
    ) -> None:
        if not features:
            raise DetectorConfigError("features must not be empty", variable="features")
        if not 1 <= min_fit <= window or refit_every < 1:
            raise DetectorConfigError("need 1 <= min_fit <= window", variable="min_fit")
        self.features = tuple(features)
        self.window = window
        self.refit_every = refit_every
        self.min_fit = min_fit
        self.n_estimators = n_estimators
        self.seed = seed
        self.z_half = z_half
        self.threshold = threshold or AdaptiveThreshold(target_rate=0.01, floor=0.6)
        self._data = np.zeros((window, len(self.features)), dtype=np.float64)
        self._n = 0
        self._since_fit = 0
        self._model: IsolationForest | None = None

    def _window(self) -> np.ndarray:
        return self._data[: min(self._n, self.window)]

    def update(self, timestamp: float, values: Mapping[str, float]) -> MultivariateScore:
        """Score one metric vector using only the past, then learn it.

        Args:
            timestamp: Seconds (echoed back only).
            values: One value per name in ``features`` (missing or non-finite -> last value).

        Returns:
            The vector's :class:`MultivariateScore`.

        Raises:
            DetectionError: When ``values`` holds none of the features.
        """
        if not any(f in values for f in self.features):
            raise DetectionError(f"vector holds none of {self.features}")
        last = self._data[(self._n - 1) % self.window] if self._n else np.zeros(len(self.features))
        row = np.array(
            [
                float(values[f]) if f in values and math.isfinite(values[f]) else float(last[i])
                for i, f in enumerate(self.features)
            ]
        )
        score = 0.0
        contributions: dict[str, float] = {}
        if self._model is not None:
            forest = float(-self._model.score_samples(row.reshape(1, -1))[0])
            past = self._window()
            med = np.median(past, axis=0)
            mad = np.median(np.abs(past - med), axis=0) * 1.4826 + 1e-9
            z = np.abs(row - med) / mad
            contributions = {f: float(z[i]) for i, f in enumerate(self.features)}
            # IsolationForest dilutes an outlier in one metric among many ordinary ones (most
            # splits fall on the others); the largest robust z-score keeps it visible.
            zmax = float(z.max())
            score = max(forest, zmax / (zmax + self.z_half))
        cut = self.threshold.value
        is_anomaly = self.threshold.observe(score) if self._model is not None else False
        self._data[self._n % self.window] = row
        self._n += 1
        self._since_fit += 1
        if self._n >= self.min_fit and (self._model is None or self._since_fit >= self.refit_every):
            self._model = IsolationForest(
                n_estimators=self.n_estimators, random_state=self.seed
            ).fit(self._window())
            self._since_fit = 0
        top = tuple(sorted(contributions, key=lambda f: -contributions[f]))
        return MultivariateScore(timestamp, score, is_anomaly, cut, contributions, top)
