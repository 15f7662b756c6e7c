"""One incident, one alert: a level shift is not alerted again while the recent window absorbs it.

Compressed timelines on event time (the service has no clock of its own: each observation
carries its timestamp). The recent window is 120 points, so it takes 10 minutes at a 10 s
cadence and an hour at 60 s to absorb a new level; the cool-down is 300 s, so without the
incident the shift alerted twice at 10 s and every 5 minutes for an hour at 60 s.
"""

import random

import pytest

from anomaly_detector.features import Observation
from anomaly_detector.service import DetectorService
from anomaly_detector.settings import AnomalySection

START_S = 1_750_000_000.0
BASELINE_POINTS = 150  # past the default 120-point warm-up
BASE_LEVEL = 8.0


def timeline(
    cadence_s,
    *,
    levels,
    hours=3.0,
    spikes=(),
    noise=0.05,
    incident_noise=None,
    seed=3,
):
    """``(timestamp_s, minutes since the first shift, value)`` of one latency series.

    ``levels``: ``(minute, level)`` steps after the baseline; ``spikes``: ``(minute, value)``
    held for three points. Noise is uniform ±``noise`` of the level (``incident_noise`` once
    the first shift happened, when given).
    """
    rng = random.Random(seed)
    points = []
    for i in range(BASELINE_POINTS + int(hours * 3600 / cadence_s)):
        minute = (i - BASELINE_POINTS) * cadence_s / 60
        level = BASE_LEVEL
        for at, step in levels:
            if minute >= at:
                level = step
        spread = incident_noise if incident_noise is not None and minute >= 0 else noise
        value = level * (1 + rng.uniform(-spread, spread))
        for at, spike in spikes:
            if at <= minute < at + 3 * cadence_s / 60:
                value = spike
        points.append((START_S + i * cadence_s, minute, value))
    return points


def observe_all(svc, points, *, emit=True):
    alerts = []
    for t, minute, value in points:
        observation = Observation("orders", "service", t, {"lat_ms": value}, "SYSTEM_EVENTS")
        findings = svc.observe(observation, emit=emit)
        alerts.extend((minute, f) for f in findings if f.type == "ai.anomaly.detected")
    return alerts


def service() -> DetectorService:
    return DetectorService(AnomalySection(multivariate=False))


@pytest.mark.parametrize("cadence_s", [10.0, 60.0])
@pytest.mark.parametrize("shifted", [30.0, 2.0], ids=["up", "down"])
def test_a_level_shift_alerts_exactly_once_over_the_next_three_hours(cadence_s, shifted):
    svc = service()
    alerts = observe_all(svc, timeline(cadence_s, levels=[(0, shifted)]))
    assert [minute for minute, _ in alerts] == [0.0]
    data = alerts[0][1].data
    assert data["metric"] == "lat_ms"
    assert "escalation_of" not in data
    state = svc.series("orders", "lat_ms")
    # The window took its time to absorb the shift: alerts were withheld, not never due.
    assert state.repeats > 0


@pytest.mark.parametrize(("cadence_s", "second_at_min"), [(10.0, 4.0), (60.0, 30.0)])
def test_a_second_larger_shift_of_an_open_incident_alerts_as_its_escalation(
    cadence_s, second_at_min
):
    svc = service()
    alerts = observe_all(svc, timeline(cadence_s, levels=[(0, 30.0), (second_at_min, 60.0)]))
    assert len(alerts) == 2
    (first_min, first), (second_min, second) = alerts
    assert first_min == 0.0
    # Reported as soon as the cool-down allows (5 minutes), within a few points anyway.
    assert max(second_at_min, 5.0) <= second_min <= max(second_at_min, 5.0) + 3 * cadence_s / 60
    assert second.data["value"] > 50.0
    escalation = second.data["escalation_of"]
    assert escalation["value"] == first.data["value"]
    assert escalation["baseline"] == pytest.approx(BASE_LEVEL, rel=0.05)


@pytest.mark.parametrize("cadence_s", [10.0, 60.0])
def test_a_second_larger_shift_after_the_first_was_absorbed_is_a_new_incident(cadence_s):
    svc = service()
    alerts = observe_all(svc, timeline(cadence_s, levels=[(0, 30.0), (150, 60.0)]))
    assert [minute for minute, _ in alerts] == [0.0, 150.0]
    assert "escalation_of" not in alerts[1][1].data


@pytest.mark.parametrize("cadence_s", [10.0, 60.0])
def test_the_same_incident_a_little_noisier_or_higher_is_not_alerted_again(cadence_s):
    # 8 -> 30 with ±30 % noise at the new level (±5 % before): the new level's own spread,
    # not the old one, says what "clearly worse" is.
    svc = service()
    noisy = observe_all(svc, timeline(cadence_s, levels=[(0, 30.0)], incident_noise=0.3))
    assert [minute for minute, _ in noisy] == [0.0]
    # 8 -> 30 -> 33: worse, but not min_z spreads worse.
    svc = service()
    creeping = observe_all(svc, timeline(cadence_s, levels=[(0, 30.0), (20, 33.0)]))
    assert [minute for minute, _ in creeping] == [0.0]


@pytest.mark.parametrize(
    ("cadence_s", "revert_min", "spike_min"), [(10.0, 5.0, 60.0), (60.0, 30.0, 90.0)]
)
def test_a_shift_that_reverts_and_a_later_spike_alert_twice(cadence_s, revert_min, spike_min):
    svc = service()
    points = timeline(
        cadence_s, levels=[(0, 30.0), (revert_min, BASE_LEVEL)], spikes=[(spike_min, 40.0)]
    )
    back = [p for p in points if p[1] < revert_min + 5 * cadence_s / 60]
    alerts = observe_all(svc, back)
    assert [minute for minute, _ in alerts] == [0.0]
    # Back at its old level for a few points: the incident is over.
    assert svc.series("orders", "lat_ms").incident is None
    alerts += observe_all(svc, points[len(back) :])
    assert [minute for minute, _ in alerts] == [0.0, spike_min]
    spike = alerts[1][1].data
    assert spike["value"] == 40.0
    assert "escalation_of" not in spike


@pytest.mark.parametrize("cadence_s", [10.0, 60.0])
def test_the_recovery_after_the_window_absorbed_the_shift_is_not_a_new_alert(cadence_s):
    svc = service()
    alerts = observe_all(svc, timeline(cadence_s, levels=[(0, 30.0), (70, BASE_LEVEL)]))
    assert [minute for minute, _ in alerts] == [0.0]
    assert svc.series("orders", "lat_ms").incident is None  # the window absorbed the recovery


def test_a_recovery_long_after_the_incident_memory_alerts_as_a_shift():
    svc = DetectorService(AnomalySection(multivariate=False, incident_memory_s=1800.0))
    alerts = observe_all(svc, timeline(10.0, levels=[(0, 30.0), (70, BASE_LEVEL)], hours=2.0))
    assert [minute for minute, _ in alerts] == [0.0, 70.0]
    assert alerts[1][1].data["metrics"][0]["z"] < 0


def test_a_departure_the_other_way_during_an_open_incident_alerts():
    # Up to 30, then at +10 minutes (window not caught up at 60 s) down to 2: below where the
    # series came from, so a new incident, not the recovery.
    svc = service()
    alerts = observe_all(svc, timeline(60.0, levels=[(0, 30.0), (10, 2.0)]))
    assert [minute for minute, _ in alerts] == [0.0, 10.0]
    assert alerts[1][1].data["value"] < 3.0


def test_an_incident_alerted_during_the_replay_is_not_alerted_again_live():
    points = timeline(60.0, levels=[(0, 30.0)])
    cut = BASELINE_POINTS + 10
    svc = service()
    assert observe_all(svc, points[:cut], emit=False) == []
    # Live: the shift is still there long after the cool-down, and no alert.
    assert observe_all(svc, points[cut:]) == []
    assert svc.series("orders", "lat_ms").repeats > 0
