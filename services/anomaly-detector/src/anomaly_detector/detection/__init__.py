"""Detection core of the anomaly detector: streaming, causal, bounded memory, no NATS.

Every detector scores a point using only the points before it, then learns it; memory per
series is bounded by its configuration. One parameter set serves every series.

API::

    from anomaly_detector.detection import (
        AdaptiveThreshold, DetectorBank, Feedback, MultivariateDetector, RiverDetector,
        SeasonalResidual, SeriesConfig, SeriesDetector,
    )

    det = SeriesDetector(SeriesConfig(warmup_points=600))
    s = det.update(timestamp_s, value)        # -> Score
    s.score, s.is_anomaly, s.novelty, s.expected, s.contributions

    bank = DetectorBank(SeriesConfig(), max_series=5_000)   # LRU-bounded, keyed (entity, metric)
    s = bank.update("orders", "latency_p99_ms", timestamp_s, value)

    mv = MultivariateDetector(["rate", "error_share", "latency_ms", "pending"])
    m = mv.update(timestamp_s, {"rate": 120.0, ...})   # -> MultivariateScore
    m.score, m.is_anomaly, m.top_features             # top_features: root-cause hints

    cut = AdaptiveThreshold(target_rate=0.01)
    cut.observe(score) -> bool                        # judge, then learn the score
    cut.feedback("false_positive", score=0.83)        # or "missed": moves the cut

* :class:`SeriesDetector` (the NAB-scored one): downsampled pattern kNN distance, turned into
  a tail probability under the series' own recent distances (empirical body, exponential tail
  fitted above the 95th percentile: peaks over threshold), so one cut suits series of any
  scale and noise; only peaks count (beat every novelty of a refractory period and 1.5x the
  previous peak: one incident, one alert). A seasonal residual (distance from the same time
  of the last 3 days, averaged over 16 steps, gated on the series being seasonal) covers a
  daily surge that does not come. ``Score.novelty`` is ``-log10`` of the tail probability;
  ``Score.score`` is in [0, 1); ``is_anomaly`` marks alerts. NAB subset: 76.7 / 70.7 / 81.1
  (standard / low-FP / low-FN), see ``bench/results/anomaly_nab.md``.
* :class:`SeasonalResidual`: that seasonal residual on its own (lag from the timestamps,
  bounded ring of past points); ``last_span()`` / ``at_latest(value)`` read it back as a
  :class:`SeasonalBaseline` (observed vs the same time of the past periods, with a robust
  period-over-period spread) to explain a verdict. ``SeriesDetector.season`` is the one a
  detector uses and ``SeriesDetector.seasonal`` says whether the season explains the series.
* :class:`MultivariateDetector`: IsolationForest refit on a sliding window of a service's
  metric vector; per-metric robust z-scores as contributions.
* :class:`RiverDetector`: river's online HalfSpaceTrees, a second opinion.
* :class:`AdaptiveThreshold`: quantile cut of recent scores, moved by operator feedback.

Errors: :class:`DetectorConfigError` (a ``backbone.errors.ConfigError``) for bad knobs,
:class:`DetectionError` (a ``BackboneError``) for misuse.
"""

from anomaly_detector.detection._bank import DetectorBank, SeriesKey
from anomaly_detector.detection._errors import DetectionError, DetectorConfigError
from anomaly_detector.detection._multivariate import MultivariateDetector, MultivariateScore
from anomaly_detector.detection._river import RiverDetector
from anomaly_detector.detection._seasonal import SeasonalBaseline, SeasonalResidual
from anomaly_detector.detection._series import Score, SeriesConfig, SeriesDetector
from anomaly_detector.detection._threshold import AdaptiveThreshold, Feedback

__all__ = [
    "AdaptiveThreshold",
    "DetectionError",
    "DetectorBank",
    "DetectorConfigError",
    "Feedback",
    "MultivariateDetector",
    "MultivariateScore",
    "RiverDetector",
    "Score",
    "SeasonalBaseline",
    "SeasonalResidual",
    "SeriesConfig",
    "SeriesDetector",
    "SeriesKey",
]
