import math

import numpy as np
import pytest

from anomaly_detector.detection import (
    AdaptiveThreshold,
    DetectionError,
    DetectorConfigError,
    Feedback,
    MultivariateDetector,
    RiverDetector,
    SeasonalResidual,
)

FEATURES = ["rate", "error_share", "latency_ms"]


def vectors(rng, n):
    rate = rng.normal(100, 5, n)
    return [
        {"rate": r, "error_share": 0.01 + rng.normal(0, 0.002), "latency_ms": 20 + 0.1 * r}
        for r in rate
    ]


def test_multivariate_flags_a_latency_outlier_and_names_it():
    rng = np.random.default_rng(1)
    det = MultivariateDetector(FEATURES, window=256, refit_every=64, n_estimators=30)
    data = vectors(rng, 400)
    data[350] = {"rate": 100.0, "error_share": 0.01, "latency_ms": 200.0}
    scores = [det.update(float(i), v) for i, v in enumerate(data)]
    assert scores[350].is_anomaly
    assert scores[350].top_features[0] == "latency_ms"
    assert scores[350].score > max(s.score for s in scores[300:350])
    assert sum(s.is_anomaly for s in scores) <= 12


def test_multivariate_is_causal():
    rng = np.random.default_rng(2)
    data = vectors(rng, 300)
    other = data[:200] + [{"rate": 1e6, "error_share": 1.0, "latency_ms": 1e6}] * 100
    a = MultivariateDetector(FEATURES, window=128, refit_every=32, n_estimators=20)
    b = MultivariateDetector(FEATURES, window=128, refit_every=32, n_estimators=20)
    sa = [a.update(float(i), v).score for i, v in enumerate(data)]
    sb = [b.update(float(i), v).score for i, v in enumerate(other)]
    assert sa[:200] == sb[:200]


def test_multivariate_rejects_a_vector_without_known_features():
    det = MultivariateDetector(FEATURES)
    with pytest.raises(DetectionError):
        det.update(0.0, {"unknown": 1.0})
    with pytest.raises(DetectorConfigError):
        MultivariateDetector([])


def test_river_half_space_trees_scores_a_spike_above_normal_points():
    rng = np.random.default_rng(3)
    det = RiverDetector(window_size=100, n_trees=10, height=6)
    x = rng.normal(10, 1, 800)
    x[700] = 40.0
    scores = [det.update(float(i), float(v)) for i, v in enumerate(x)]
    assert scores[700].score > np.quantile([s.score for s in scores[300:700]], 0.99)


def test_threshold_tracks_the_score_distribution():
    rng = np.random.default_rng(4)
    cut = AdaptiveThreshold(target_rate=0.05, min_samples=50, window=1000)
    for s in rng.uniform(0, 1, 1000):
        cut.observe(float(s))
    assert cut.value == pytest.approx(0.95, abs=0.03)
    for s in rng.uniform(0, 0.1, 1000):
        cut.observe(float(s))
    assert cut.value < 0.15


def test_false_positive_feedback_raises_the_cut_above_the_score():
    rng = np.random.default_rng(5)
    cut = AdaptiveThreshold(target_rate=0.05, min_samples=50)
    for s in rng.uniform(0, 1, 500):
        cut.observe(float(s))
    before = cut.value
    after = cut.feedback("false_positive", score=before + 0.01)
    assert after > before + 0.01
    assert not cut.observe(before + 0.01)
    assert cut.target_rate < 0.05


def test_missed_feedback_lowers_the_cut_below_the_score():
    rng = np.random.default_rng(6)
    cut = AdaptiveThreshold(target_rate=0.05, min_samples=50)
    for s in rng.uniform(0, 1, 500):
        cut.observe(float(s))
    before = cut.value
    after = cut.feedback(Feedback.MISSED, score=before - 0.2)
    assert after < before - 0.2
    assert cut.observe(before - 0.2)
    assert cut.target_rate > 0.05


def test_feedback_without_score_still_moves_the_cut_the_right_way():
    cut = AdaptiveThreshold(initial=0.5)
    up = cut.feedback(Feedback.FALSE_POSITIVE)
    assert up > 0.5
    down = cut.feedback(Feedback.MISSED)
    assert down < up


def test_threshold_rejects_bad_knobs():
    with pytest.raises(DetectorConfigError):
        AdaptiveThreshold(target_rate=0.0)
    with pytest.raises(ValueError, match="step"):
        AdaptiveThreshold(step=1.5)


def test_false_positive_moves_a_cut_held_up_by_the_floor_past_the_score():
    rng = np.random.default_rng(9)
    cut = AdaptiveThreshold(target_rate=0.05, min_samples=50, floor=0.9)
    for s in rng.uniform(0, 0.2, 500):  # the quantile sits far below the floor
        cut.observe(float(s))
    assert cut.value == 0.9
    after = cut.feedback("false_positive", score=0.95)
    assert after > 0.95
    assert not cut.observe(0.95)


DAY_S = 86_400.0
CADENCE_S = 300.0  # 288 points a day


def daily(rng, days, noise=0.5):
    t = np.arange(int(days * DAY_S / CADENCE_S))
    return t * CADENCE_S, 10.0 + 5.0 * np.sin(2 * np.pi * t / 288) + rng.normal(0, noise, len(t))


def feed(season, ts, xs):
    for t, x in zip(ts, xs, strict=True):
        season.update(float(t), float(x))


def test_seasonal_residual_learns_the_lag_from_timestamps_and_sees_the_season():
    rng = np.random.default_rng(20)
    ts, xs = daily(rng, 4)
    season = SeasonalResidual(period_s=DAY_S, periods=3, span_points=20, max_points=4096)
    feed(season, ts, xs)
    assert season.lag_points == 288
    assert season.ready
    # In phase only the noise differs; half a day off the whole wave does.
    assert season.residual < 0.2 * season.anti_residual
    assert season.nbytes == (3 * 288 + 1) * 8


def test_seasonal_residual_rises_when_the_season_breaks_and_one_odd_day_is_forgiven():
    rng = np.random.default_rng(21)
    ts, xs = daily(rng, 5)
    xs[3 * 288 : 3 * 288 + 100] = 10.0  # day 3: the wave stays flat for 100 points
    season = SeasonalResidual(period_s=DAY_S, periods=3, span_points=20, max_points=4096)
    normal = []
    broken = []
    for i, (t, x) in enumerate(zip(ts, xs, strict=True)):
        season.update(float(t), float(x))
        if 3 * 288 + 60 <= i < 3 * 288 + 100:
            broken.append(season.residual)
        elif 4 * 288 + 60 <= i < 4 * 288 + 100:
            # Day 4 is normal again: compared with the older normal days, not the odd one.
            normal.append(season.residual)
    assert min(broken) > 5 * max(normal)


def test_seasonal_residual_is_off_when_the_period_does_not_fit_in_memory():
    season = SeasonalResidual(period_s=DAY_S, periods=3, span_points=20, max_points=4096)
    for i in range(200):
        season.update(float(i), 1.0)  # one point a second: 3 days = 259200 points
    assert not season.ready
    assert season.nbytes == 0
    assert math.isnan(season.residual)
    assert math.isnan(season.anti_residual)


def test_seasonal_residual_rejects_bad_knobs():
    with pytest.raises(DetectorConfigError):
        SeasonalResidual(period_s=0.0, periods=3, span_points=20, max_points=4096)
