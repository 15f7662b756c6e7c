import math

import numpy as np
import pytest

from anomaly_detector import detection
from anomaly_detector.detection import (
    DetectorBank,
    DetectorConfigError,
    SeriesConfig,
    SeriesDetector,
)

N = 2400
WARMUP = 600
CFG = SeriesConfig(warmup_points=WARMUP)


def seasonal(rng, n=N, period=288, noise=0.3):
    t = np.arange(n)
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / period) + rng.normal(0, noise, n)


def run(values, cfg=CFG):
    det = SeriesDetector(cfg)
    return [det.update(float(i), float(v)) for i, v in enumerate(values)]


def alerts(scores):
    return [i for i, s in enumerate(scores) if s.is_anomaly]


def test_public_api_all_is_sorted_and_complete():
    assert detection.__all__ == sorted(detection.__all__)
    public = {n for n in dir(detection) if not n.startswith("_") and n[0].isupper()}
    assert public == set(detection.__all__)


def test_spike_is_detected_at_the_spike():
    rng = np.random.default_rng(1)
    x = seasonal(rng)
    x[1800] += 15.0
    found = alerts(run(x))
    assert any(1800 <= i <= 1800 + CFG.step_points for i in found)


def test_level_shift_is_detected_soon_after_it_starts():
    rng = np.random.default_rng(2)
    x = rng.normal(50.0, 1.0, N)
    x[1700:] += 12.0
    found = [i for i in alerts(run(x)) if i >= 1700]
    assert found
    assert found[0] - 1700 <= 8 * CFG.step_points


def test_trend_change_is_detected():
    rng = np.random.default_rng(3)
    x = rng.normal(20.0, 0.5, N)
    ramp = np.clip(np.arange(N) - 1600, 0, None) * 0.05
    found = [i for i in alerts(run(x + ramp)) if i >= 1600]
    assert found
    assert found[0] < 1600 + 200


def test_seasonality_alone_raises_no_alert_but_a_broken_season_does():
    rng = np.random.default_rng(4)
    clean = seasonal(rng)
    assert alerts(run(clean)) == []
    broken = clean.copy()
    broken[1900:2050] = 12.0  # the daily wave gets stuck high for half a day
    assert [i for i in alerts(run(broken)) if 1900 <= i < 2100]


def test_no_alert_during_warmup_and_scores_stay_in_unit_interval():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, N)
    x[300] = 50.0
    scores = run(x)
    assert all(not s.is_anomaly for s in scores[:WARMUP])
    assert all(0.0 <= s.score < 1.0 for s in scores)


def test_changing_future_points_never_changes_past_scores():
    rng = np.random.default_rng(6)
    x = seasonal(rng)
    y = x.copy()
    cut = 1500
    y[cut:] = rng.normal(-40, 9, N - cut)
    a, b = run(x), run(y)
    assert [(s.score, s.is_anomaly, s.novelty) for s in a[:cut]] == [
        (s.score, s.is_anomaly, s.novelty) for s in b[:cut]
    ]


def test_memory_is_bounded_whatever_the_length():
    cfg = SeriesConfig(warmup_points=60, memory_steps=50, calibration_steps=40)
    det = SeriesDetector(cfg)
    rng = np.random.default_rng(7)
    for i, v in enumerate(rng.normal(0, 1, 300)):
        det.update(float(i), float(v))
    size = det.nbytes
    for i, v in enumerate(rng.normal(0, 1, 3000)):
        det.update(float(300 + i), float(v))
    assert det.nbytes == size
    assert det._patterns.shape[0] == 50
    assert len(det._block) < cfg.step_points


def test_non_finite_values_are_ignored():
    det = SeriesDetector(CFG)
    s = det.update(0.0, math.nan)
    assert s.score == 0.0
    assert not s.is_anomaly
    assert det.points_seen == 0


def test_alerts_are_suppressed_after_an_alert():
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, N)
    x[1700:1760] += 30.0
    found = alerts(run(x))
    assert found
    gaps = np.diff(found)
    assert all(g >= CFG.suppress_for_points for g in gaps)


@pytest.mark.parametrize(
    "kwargs", [{"window": 1}, {"warmup_points": 0}, {"alert_novelty": 0}, {"quiet_scale": 2}]
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(DetectorConfigError):
        SeriesConfig(**kwargs)


def test_bank_keeps_at_most_max_series_and_evicts_least_recent():
    bank = DetectorBank(SeriesConfig(warmup_points=60), max_series=3)
    for i in range(5):
        bank.update("svc", f"m{i}", 0.0, 1.0)
    bank.update("svc", "m2", 1.0, 1.0)
    bank.update("svc", "m9", 1.0, 1.0)
    assert len(bank) == 3
    assert bank.evicted == 3
    assert bank.keys() == [("svc", "m4"), ("svc", "m2"), ("svc", "m9")]
