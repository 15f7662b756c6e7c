"""Online-learning detector from river: Half-Space Trees on a min-max scaled value."""

from __future__ import annotations

import math

from river import anomaly, preprocessing

from anomaly_detector.detection._series import Score
from anomaly_detector.detection._threshold import AdaptiveThreshold


class RiverDetector:
    """river's HalfSpaceTrees (online, constant memory) on one series, with an adaptive cut.

    It is the simplest online learner river offers for streams; on NAB it scores far below
    :class:`SeriesDetector` (about 11 vs 60), so the service uses it as a second opinion.

    Args:
        window_size: Points per HST reference window.
        n_trees: Trees in the forest.
        height: Depth of each tree.
        seed: Random seed (deterministic results).
        threshold: The alert cut; defaults to a 1 % target rate with a 0.7 floor.
    """

    def __init__(
        self,
        *,
        window_size: int = 250,
        n_trees: int = 10,
        height: int = 8,
        seed: int = 0,
        threshold: AdaptiveThreshold | None = None,
    ) -> None:
        self._model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self.threshold = threshold or AdaptiveThreshold(target_rate=0.01, floor=0.7)

    def update(self, timestamp: float, value: float) -> Score:
        """Score one point using only the past, then learn it."""
        if not math.isfinite(value):
            return Score(timestamp, value, 0.0, is_anomaly=False)
        x = {"value": value}
        score = float(self._model.score_one(x))
        is_anomaly = self.threshold.observe(score)
        self._model.learn_one(x)
        return Score(timestamp, value, score, is_anomaly, contributions={"hst": score})
