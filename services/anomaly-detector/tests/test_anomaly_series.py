import itertools
import math

import numpy as np
import pytest

from anomaly_detector import detection
from anomaly_detector.detection import (
    DetectorBank,
    DetectorConfigError,
    SeasonalResidual,
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


def test_alerts_are_suppressed_after_an_alert_unless_clearly_worse():
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, N)
    x[1700:1760] += 30.0
    scores = run(x)
    found = alerts(scores)
    assert found
    for a, b in itertools.pairwise(found):
        if b - a < CFG.suppress_for_points:
            assert scores[b].novelty > CFG.rearm_factor * scores[a].novelty


def test_one_incident_raises_an_early_alert_and_few_repeats():
    # A shift's novelty grows while the pattern fills with it: the refractory period lets
    # at most one clearly worse repeat through, never one alert per step.
    rng = np.random.default_rng(9)
    x = rng.normal(0, 1, N)
    x[1700:1730] += 8.0
    found = [i for i in alerts(run(x)) if i >= 1690]
    assert 1 <= len(found) <= 2
    assert found[0] <= 1700 + 2 * CFG.step_points


def test_a_huge_past_spike_does_not_hide_a_later_level_shift():
    # A calibration by the largest past distance would be blinded by the spike for good.
    rng = np.random.default_rng(10)
    x = rng.normal(20.0, 0.5, N)
    x[900] = 200.0
    x[1800:] += 6.0
    found = alerts(run(x))
    assert any(900 <= i <= 900 + CFG.step_points for i in found)
    later = [i for i in found if i >= 1800]
    assert later
    assert later[0] - 1800 <= 8 * CFG.step_points


def test_novelty_is_comparable_across_scales_and_noise_levels():
    # The same anomaly relative to each series' own noise scores alike whatever the units.
    rng = np.random.default_rng(11)
    base = rng.normal(0.0, 1.0, N)
    base[1900:1910] += 12.0
    small = max(s.novelty for s in run(base)[1890:1930])
    large = max(s.novelty for s in run(1000.0 + 250.0 * base)[1890:1930])
    assert small == pytest.approx(large, rel=1e-6)
    assert small >= CFG.alert_novelty


def test_pure_noise_alerts_rarely():
    # At the NAB-optimal cut white noise alerts about once per 900 points; the service's
    # AdaptiveThreshold and operator feedback tighten it further.
    rng = np.random.default_rng(12)
    found = alerts(run(rng.normal(5.0, 2.0, 6000)))
    assert len(found) <= (6000 - WARMUP) // 500


def test_flat_series_alerts_on_any_change():
    x = np.full(N, 7.0)
    x[1500:] = 7.5
    found = alerts(run(x))
    assert found
    assert 1500 <= found[0] <= 1500 + CFG.step_points


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 1},
        {"warmup_points": 0},
        {"alert_novelty": 0},
        {"quiet_scale": 2},
        {"tail_quantile": 1.0},
        {"rearm_factor": 0.5},
        {"suppress_fraction": 0.0},
        {"calibration_steps": 3},
        {"season_s": -1.0},
        {"season_periods": 0},
        {"season_gate": 0.0},
    ],
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


CADENCE_S = 300.0  # NAB's 5-minute cadence: 288 points a day, so the daily season is live


def surges(rng, days=8, noise=2.0):
    # Quiet nights, a busy block from 09:00 to 18:00 every day.
    t = np.arange(days * 288)
    busy = (t % 288 >= 108) & (t % 288 < 216)
    return np.where(busy, 80.0, 20.0) + rng.normal(0, noise, len(t))


def run_timed(values, cfg=CFG):
    det = SeriesDetector(cfg)
    return [det.update(i * CADENCE_S, float(v)) for i, v in enumerate(values)]


def test_a_daily_surge_that_does_not_come_is_detected_by_the_season():
    # A flat quiet day looks like an ordinary night to a context-free pattern match; only
    # the comparison with the same time of the previous days sees it.
    rng = np.random.default_rng(30)
    x = surges(rng)
    day = 6 * 288
    x[day + 108 : day + 216] = 20.0 + rng.normal(0, 2.0, 108)
    scores = run_timed(x)
    found = [i for i in alerts(scores) if day + 108 <= i < day + 216]
    assert found
    assert any(s.contributions.get("seasonal_novelty", 0.0) >= CFG.alert_novelty for s in scores)
    without = run_timed(x, SeriesConfig(warmup_points=WARMUP, season_s=0.0))
    assert not [i for i in alerts(without) if day + 108 <= i < day + 216]


def test_regular_surges_alone_raise_no_alert():
    rng = np.random.default_rng(31)
    assert alerts(run_timed(surges(rng))) == []


def test_seasonal_detector_never_looks_ahead():
    rng = np.random.default_rng(32)
    x = surges(rng)
    y = x.copy()
    cut = 1700
    y[cut:] = rng.normal(-40, 9, len(x) - cut)
    a, b = run_timed(x), run_timed(y)
    assert [(s.score, s.is_anomaly, s.novelty) for s in a[:cut]] == [
        (s.score, s.is_anomaly, s.novelty) for s in b[:cut]
    ]


FINE_S = 10.0  # the service's snapshot cadence: 8640 points a day, 3 days do not fit raw
FINE_DAY = 8640
HOUR = 360  # points per hour at 10 s


def fine_surges(rng, days):
    tod = np.arange(days * FINE_DAY) % FINE_DAY
    busy = (tod >= 9 * HOUR) & (tod < 18 * HOUR)
    return np.where(busy, 80.0, 20.0) + rng.normal(0, 2.0, len(tod))


def test_a_missing_surge_is_seen_by_the_season_at_a_ten_second_cadence():
    rng = np.random.default_rng(40)
    days = 4
    x = fine_surges(rng, days)
    day = (days - 1) * FINE_DAY
    window = slice(day + 9 * HOUR, day + 18 * HOUR)
    x[window] = 20.0 + rng.normal(0, 2.0, 9 * HOUR)  # the busy block of the last day never comes
    t0 = 1_750_032_000.0  # midnight UTC

    def run_fine(cfg):
        det = SeriesDetector(cfg)
        return det, [det.update(t0 + i * FINE_S, float(v)) for i, v in enumerate(x)]

    det, scores = run_fine(SeriesConfig(warmup_points=120))  # the service's warm-up
    season = det._season
    assert season is not None
    assert season.binned  # 5-minute means: three days in 865 values instead of 25 921 points
    assert season.lag_points == 288
    assert season.nbytes == (3 * 288 + 1) * 8
    seasonal = np.array([s.contributions.get("seasonal_novelty", 0.0) for s in scores])
    inside = np.zeros(len(x), dtype=bool)
    inside[window] = True
    # Ordinary days stay within the calibrated tail; the missing surge is far outside it,
    # from its first 5-minute bin on.
    assert seasonal[~inside].max() < 5.0
    assert seasonal[inside].max() > 20.0
    first = int(np.argmax(inside & (seasonal >= 5.0)))
    assert first - (day + 9 * HOUR) <= HOUR // 6
    flagged = [
        i
        for i in alerts(scores)
        if inside[i] and scores[i].contributions["seasonal_novelty"] >= scores[i].novelty
    ]
    assert flagged
    assert flagged[0] - (day + 9 * HOUR) <= HOUR // 6

    _, without = run_fine(SeriesConfig(warmup_points=120, season_s=0.0))
    assert max(s.novelty for s in without[window]) < 5.0  # a quiet day is just a quiet day


def test_binned_season_places_bins_by_time_so_a_gap_keeps_the_phase():
    def fed(skip):
        season = SeasonalResidual(
            period_s=86_400.0, periods=3, span_points=4, max_points=4096, bin_s=300.0
        )
        for i in range(3 * FINE_DAY + 12 * HOUR):
            if skip and 2 * FINE_DAY <= i < 2 * FINE_DAY + 2 * HOUR:
                continue  # two hours without snapshots (a restart)
            tod = i % FINE_DAY
            season.update(i * FINE_S, 80.0 if 9 * HOUR <= tod < 18 * HOUR else 20.0)
        return season

    steady, gapped = fed(skip=False), fed(skip=True)
    assert steady.binned
    assert gapped.binned
    assert steady.residual == 0.0
    assert gapped.residual == 0.0  # still in phase after the gap
    assert gapped.anti_residual == steady.anti_residual == 60.0
