"""The detector service's logic, without NATS: observations in, findings out.

Per series ``(entity, metric)``:

* a :class:`~anomaly_detector.detection.SeriesDetector` (pattern novelty) whose score goes
  through an :class:`~anomaly_detector.detection.AdaptiveThreshold` (the cut operator feedback
  moves);
* a :class:`~anomaly_detector.features.RobustWindow` (median/MAD of recent values) that gates
  alerts on significance: a value must be ``min_z`` robust deviations (and
  ``min_relative_change`` of the level) away from the recent median. This keeps quiet the tiny
  wiggles a pattern detector finds "novel" on a flat series, which is where alert fatigue
  comes from;
* a sustained path: ``sustained_points`` consecutive points beyond ``sustained_z`` alert even
  when the pattern detector is in its own post-alert suppression, so a level shift right after
  a suppressed blip is not missed;
* a seasonal path (``basis: "seasonal"``), for what the recent window cannot see: a daily
  surge that does not come looks like an ordinary quiet stretch to the last 20 minutes. When
  the detector's score passed the cut because of its seasonal residual (``seasonal_novelty``
  at least ``pattern_novelty``), significance is judged against the same time of the
  previous days instead (:meth:`~anomaly_detector.detection.SeasonalResidual.last_span`: the
  span's mean against each past day's, at the service's 10 s cadence 5-minute bin means):
  ``min_z`` robust spreads (the median period-over-period difference, never below
  ``min_relative_change`` of the expected level) from the *closest* past day, even letting
  the usual level come ``seasonal_tolerance_s`` early or late. The first span after the
  detector's flag that departs so alerts (a missing 09:00 surge is called at about 09:15 by
  default); a surge that is merely a few minutes late does not. The event carries
  ``basis: "seasonal"``, a ``seasonal`` block (since when, the window, observed, expected =
  median of the previous days, their values, deviation, spread, z), a one-line ``summary``,
  a leading root-cause hint with the same numbers, and ``evidence.previous_periods`` (links to
  the same window on the previous days). Then the path stays quiet until a span is back
  within ``min_z`` of the season: one incident, one alert;
* the season also keeps false alarms down: on a series the season explains (the detector's
  gate), a recent-window alert is withheld when the value is within ``min_z`` (seasonal
  spread or recent scale, whichever is larger) of the same time, within the tolerance, on
  one of the previous days. The usual 09:00 surge is far from the last 20 minutes but not
  from yesterday's 09:00 (:attr:`SeriesState.explained` counts these). A spike or a level
  shift that the previous days did not have still alerts on the recent basis, and covers
  the incident for the seasonal path;
* a :class:`~anomaly_detector.features.TrendWindow` for predictions.

An alert fires when the series is warm, the value is significant, and the adaptive cut or the
sustained path says so, outside the series' cool-down (event time): one incident, one alert.
The cool-down alone is not enough for a level shift: the recent window takes half its length
(10 minutes at a 10 s cadence, an hour at 60 s) to absorb the new level, and the shift would
alert again after every cool-down until then. So an alert on the recent basis opens an
:class:`Incident` that the series' later points are followed against:

* while it is open, a further alert in the same direction needs the value ``min_z`` spreads
  (the larger of the pre-incident scale and the incident's own) past the level alerted, or
  where the incident has stood since if that is further: a clearly worse incident alerts
  again (with ``escalation_of``), the same one does not (:attr:`SeriesState.repeats`);
* it ends when the series has been back within ``min_z`` of its pre-incident level for
  ``sustained_points`` points (nothing alerts on the way back: the recent window still holds
  that level), after which a new spike or shift alerts normally;
* it settles once the recent window's median has reached the incident's: the window has
  absorbed the new level, and any departure from it is judged against the window alone. The
  one thing still recognised is the recovery: coming back to the pre-incident level within
  ``incident_memory_s`` of the alert (6 hours by default) is the incident's end, not a new
  alert. A departure in the other direction that does not land at that level is a new
  incident, whenever it comes.

Seasonal memory and restarts: the season lives in memory only (the detector's bounded ring of
the last 3 days, 865 five-minute means per series). The start-up replay covers
``replay_window_s`` (30 minutes by default), so after a restart a series has no past days:
for the first day the seasonal path cannot fire (a missing surge goes unseen) and nothing is
explained by the season (the first surge after the restart may alert on the recent basis,
as on the very first day a series is watched). Each restored day brings one period back; the
full 3-day comparison returns after 3 days. A longer replay window rebuilds it at the cost of
start-up time (every snapshot of the window is scored again); nothing is persisted.
All metrics of one observation that alert are reported together in one ``ai.anomaly.detected``;
an :class:`~anomaly_detector.detection.MultivariateDetector` per entity (IsolationForest over
the entity's metric vector) supplies the root-cause hints (metrics ranked by robust z-score).

Confidence = ``1 - (1 - c_z)(1 - 0.5 h_s)(1 - 0.5 h_m)`` where ``c_z = 1 - exp(-|z| / (2 min_z))``
and ``h_s``/``h_m`` are 1 when the series cut / the multivariate detector agree.

Operator feedback (``ai.feedback.false_positive`` / ``ai.feedback.missed``) is applied to the
series concerned: the adaptive cut moves past the alert's score and the significance gate of
that series becomes 25 % stricter (false positive) or 20 % looser (missed, which also lowers
the cut's floor towards ``series_cut_min``).
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from anomaly_detector.actions import Suggestion, Throttle, suggest
from anomaly_detector.detection import (
    AdaptiveThreshold,
    Feedback,
    MultivariateDetector,
    Score,
    SeasonalBaseline,
    SeasonalResidual,
    SeriesConfig,
    SeriesDetector,
)
from anomaly_detector.features import Observation, RobustWindow, TrendWindow, iso

if TYPE_CHECKING:
    from anomaly_detector.settings import AnomalySection

ANOMALY_TYPE: Final = "ai.anomaly.detected"
PREDICTION_TYPE_PREFIX: Final = "ai.prediction."
SUGGESTED_TYPE: Final = "ai.action.suggested"
APPLIED_TYPE: Final = "ai.action.applied"
FEEDBACK_TYPE_PREFIX: Final = "ai.feedback."
SOURCE: Final = "/backbone/anomaly-detector"

_SENSITIVITY_MIN: Final = 0.25
_SENSITIVITY_MAX: Final = 4.0
_FP_FACTOR: Final = 1.25
_MISSED_FACTOR: Final = 0.8
_MAX_HINTS: Final = 3
_MAX_MV_FEATURES: Final = 32
_MAX_ALERT_INDEX: Final = 10_000
_MAX_PENDING_FEEDBACK: Final = 1_000
_TREND_AGREEMENT: Final = 0.7
_ERROR_RATIO_METRIC: Final = "handler_error_ratio"
_RATE_METRIC: Final = "rate_per_s"
_DELIVERED_METRIC: Final = "delivered_per_s"
_LATENCY_SUFFIX: Final = "latency_p99_ms"
#: What an alert's significance was judged against: the last ``robust_window`` points, or
#: the same time of the previous periods (days).
BASIS_RECENT: Final = "recent"
BASIS_SEASONAL: Final = "seasonal"
PATH_SEASONAL: Final = "seasonal"
_TINY: Final = 1e-9
_DAY_S: Final = 86400.0


@dataclass(frozen=True, slots=True)
class Finding:
    """Something to publish: an anomaly or a prediction, with its suggested actions.

    Attributes:
        type: ``ai.anomaly.detected`` or ``ai.prediction.<kind>``.
        id: The CloudEvent id (operators quote it in feedback).
        subject: The entity (CloudEvent ``subject``).
        timestamp_s: When the evidence was observed (CloudEvent ``time``).
        data: The CloudEvent data.
        suggestions: Actions that would help.
    """

    type: str
    id: str
    subject: str
    timestamp_s: float
    data: dict[str, Any]
    suggestions: tuple[Suggestion, ...] = ()


@dataclass(slots=True)
class _Verdict:
    metric: str
    value: float
    z: float
    score: float
    threshold: float
    expected: float
    cut_hit: bool
    path: str | None
    basis: str = BASIS_RECENT
    seasonal: SeasonalBaseline | None = None
    #: Start of the first span the seasonal residual flagged (the departure's onset).
    seasonal_since_s: float = math.nan
    #: The open incident this alert is clearly worse than (an escalation, not a new incident).
    escalates: Incident | None = None


@dataclass(slots=True)
class Incident:
    """An incident of one series on the recent basis: opened by an alert, followed to its end.

    Later alerts of the series in the same direction are repeats unless the value is clearly
    worse than the incident (``min_z`` further spreads past the level alerted or, if higher,
    where the incident has stood since): a level shift is one incident however long the
    recent window takes to absorb it.

    Attributes:
        since_s: When it was alerted.
        sign: ``+1.0`` above the pre-incident level, ``-1.0`` below.
        baseline: The pre-incident level (the recent window's median at the alert).
        baseline_scale: The recent window's robust scale at the alert.
        level: The value alerted.
        window: The values since the alert: their median is where the incident stands, their
            spread its own noise.
        back: Consecutive points back within ``min_z`` of the pre-incident level.
        settled: The recent window has absorbed the incident's level.
    """

    since_s: float
    sign: float
    baseline: float
    baseline_scale: float
    level: float
    window: RobustWindow
    back: int = 0
    settled: bool = False

    def add(self, value: float) -> None:
        """Learn a point of the incident."""
        self.window.add(value)

    def covers(self, value: float, z: float, sensitivity: float, cfg: AnomalySection) -> bool:
        """Whether an alert on ``value`` (robust z ``z`` on the recent basis) is this incident.

        It is when it is the recovery (the other direction, back within ``min_z`` of the
        pre-incident level) or, while the incident is open, the same direction without being
        ``min_z`` spreads worse than the incident (the spread: the larger of the pre-incident
        scale and the incident's own).
        """
        band = cfg.min_z * sensitivity
        if z * self.sign < 0:
            return abs(value - self.baseline) < band * self.baseline_scale
        if self.settled:
            return False
        level, scale = self.level, self.baseline_scale
        if len(self.window):
            median, own_scale = self.window.stats()
            level = self.sign * max(self.sign * level, self.sign * median)
            scale = max(scale, own_scale)
        return (value - level) * self.sign < band * scale


@dataclass
class SeriesState:
    """Everything kept for one series (bounded by the settings)."""

    detector: SeriesDetector
    threshold: AdaptiveThreshold
    window: RobustWindow
    trend: TrendWindow
    sensitivity: float = 1.0
    points: int = 0
    over: int = 0
    last_alert_s: float = -math.inf
    #: Alerts of the recent-window paths withheld because the season explains the value.
    explained: int = 0
    #: Alerts of the recent-window paths withheld as repeats of the open incident (same
    #: direction, not clearly worse) or as its recovery.
    repeats: int = 0
    #: The incident the last recent-basis alert opened, followed until it ends.
    incident: Incident | None = None
    #: A seasonal candidate waiting for a departing span:
    #: ``(timestamp_s, season version, start of the flagged span)``.
    seasonal_pending: tuple[float, int, float] | None = None
    #: A seasonal incident was alerted and the season still disagrees (one incident, one alert).
    seasonal_episode: bool = False
    _episode_version: int = 0
    _episode_sign: float = 0.0

    def update(
        self, metric: str, timestamp_s: float, value: float, cfg: AnomalySection
    ) -> _Verdict:
        """Score one point with the past, then learn it."""
        med, recent_scale = self.window.stats()
        z = 0.0 if math.isnan(med) else (value - med) / recent_scale  # RobustWindow.zscore
        score = self.detector.update(timestamp_s, value)
        cut = self.threshold.value
        cut_hit = self.threshold.observe(score.score)
        self.over = self.over + 1 if abs(z) >= cfg.sustained_z * self.sensitivity else 0
        warm = self.points >= cfg.warmup_points
        significant = abs(z) >= cfg.min_z * self.sensitivity
        sustained = self.over >= cfg.sustained_points
        cooling = timestamp_s - self.last_alert_s < cfg.alert_cooldown_s
        expected = score.expected if math.isfinite(score.expected) else med
        verdict = _Verdict(metric, value, z, score.score, cut, expected, cut_hit, None)
        incident = self._follow_incident(timestamp_s, value, med, recent_scale, cfg)
        seasonal = self._seasonal(
            timestamp_s, score, cfg, ready=warm and not cooling, cut_hit=cut_hit
        )
        if seasonal is not None:
            base, verdict.seasonal_since_s = seasonal
            verdict.path, verdict.basis, verdict.seasonal = PATH_SEASONAL, BASIS_SEASONAL, base
            verdict.z, verdict.expected = self._seasonal_z(base, cfg), base.expected
            self.last_alert_s = timestamp_s
        elif warm and significant and not cooling and (cut_hit or sustained):
            if self._explained(value, recent_scale, cfg):
                self.explained += 1
            elif incident is not None and incident.covers(value, z, self.sensitivity, cfg):
                self.repeats += 1
            else:
                verdict.path = "series" if cut_hit else "sustained"
                self.last_alert_s = timestamp_s
                self._covered(z)
                if incident is not None and not incident.settled and incident.sign * z > 0:
                    verdict.escalates = incident
                self._open_incident(
                    timestamp_s, value=value, z=z, med=med, recent_scale=recent_scale, cfg=cfg
                )
        if self.incident is not None:
            self.incident.add(value)
        self.window.add(value)
        self.trend.add(timestamp_s, value)
        self.points += 1
        return verdict

    def _open_incident(
        self,
        timestamp_s: float,
        *,
        value: float,
        z: float,
        med: float,
        recent_scale: float,
        cfg: AnomalySection,
    ) -> None:
        """Follow the incident an alert on the recent basis opened.

        A clearly worse alert of an incident still open keeps the pre-incident level: the
        incident ends when the series is back there, not at the level it worsened from.
        """
        sign = math.copysign(1.0, z)
        old = self.incident
        if old is not None and not old.settled and old.sign == sign:
            med, recent_scale = old.baseline, old.baseline_scale
        self.incident = Incident(
            since_s=timestamp_s,
            sign=sign,
            baseline=med,
            baseline_scale=recent_scale,
            level=value,
            window=RobustWindow(cfg.robust_window, min_relative=cfg.min_relative_change),
        )

    def _follow_incident(
        self,
        timestamp_s: float,
        value: float,
        med: float,
        recent_scale: float,
        cfg: AnomalySection,
    ) -> Incident | None:
        """Advance the open incident with a new point (before it is learnt); None once over.

        An open incident ends when the series has been back at its pre-incident level for
        ``sustained_points`` points (the recent window still holds that level, so the return
        does not alert), and settles once the recent window's median has reached the
        incident's own (the window absorbed the new level, so a further departure is
        significant against it alone). A settled incident only still recognises the
        recovery; it ends once the window has absorbed the recovery too, or when the series
        is elsewhere ``incident_memory_s`` after the alert.
        """
        incident = self.incident
        if incident is None:
            return None
        band = cfg.min_z * self.sensitivity
        if incident.settled:
            recovered = abs(med - incident.baseline) < band * incident.baseline_scale
            recovering = abs(value - incident.baseline) < band * incident.baseline_scale
            forgotten = not recovering and timestamp_s - incident.since_s > cfg.incident_memory_s
            if recovered or forgotten:
                self.incident = None
            return self.incident
        if abs(value - incident.baseline) < band * incident.baseline_scale:
            incident.back += 1
            if incident.back >= cfg.sustained_points:
                self.incident = None
                return None
        else:
            incident.back = 0
        if len(incident.window) and abs(incident.window.stats()[0] - med) < band * recent_scale:
            incident.settled = True
        return incident

    def _seasonal(
        self,
        timestamp_s: float,
        score: Score,
        cfg: AnomalySection,
        *,
        ready: bool,
        cut_hit: bool,
    ) -> tuple[SeasonalBaseline, float] | None:
        """The seasonal path: a departure from the same time of past periods that holds.

        A candidate is a step whose score passed the cut because of the seasonal residual
        (``seasonal_novelty`` at least the pattern novelty). From the next span on, the first
        span that is ``min_z`` robust spreads from every past period even allowing
        ``seasonal_tolerance_s`` of shift (a surge a few minutes late is not a missing surge)
        alerts; none within twice that tolerance (plus one slot) drops the candidate. After an
        alert (on either basis: a level shift the recent window caught is not alerted again
        as a seasonal departure) the path stays quiet until a span is back within ``min_z``
        of the season or departs the other way (one incident, one alert; the detector's own
        novelty fades as its calibration learns the incident, so it cannot tell the end).
        """
        season = self.detector.season
        if season is None:
            return None
        if self.seasonal_episode:
            self._follow_episode(season, cfg)
            return None
        if not ready:
            return None
        pending = self.seasonal_pending
        if pending is None:
            seasonal_novelty = score.contributions.get("seasonal_novelty", 0.0)
            pattern_novelty = score.contributions.get("pattern_novelty", 0.0)
            if cut_hit and 0.0 < seasonal_novelty >= pattern_novelty:
                flagged = season.last_span()
                since_s = flagged.start_s if flagged is not None else timestamp_s
                self.seasonal_pending = (timestamp_s, season.version, since_s)
            return None
        base = self._confirmed(season, timestamp_s, cfg)
        if base is None:
            return None
        self.seasonal_episode = True
        self._episode_version = season.version
        self._episode_sign = math.copysign(1.0, base.observed - base.expected)
        return base, pending[2]

    def _confirmed(
        self, season: SeasonalResidual, timestamp_s: float, cfg: AnomalySection
    ) -> SeasonalBaseline | None:
        """The latest span, when it is new since the candidate and departs from the season."""
        assert self.seasonal_pending is not None  # noqa: S101 - checked by the caller
        since_s, version, onset_s = self.seasonal_pending
        if season.version == version:
            return None
        self.seasonal_pending = (since_s, season.version, onset_s)
        base = season.last_span(tolerance=_slots(season, cfg.seasonal_tolerance_s))
        if base is not None and abs(self._seasonal_z(base, cfg)) >= cfg.min_z * self.sensitivity:
            self.seasonal_pending = None
            return base
        if timestamp_s - since_s > 2 * cfg.seasonal_tolerance_s + season.slot_s:
            self.seasonal_pending = None
        return None

    def _covered(self, z: float) -> None:
        """An alert on the recent basis covers the incident for the seasonal path too."""
        season = self.detector.season
        if season is not None and self.detector.seasonal:
            self.seasonal_pending = None
            self.seasonal_episode = True
            self._episode_version = season.version
            self._episode_sign = math.copysign(1.0, z)

    def _follow_episode(self, season: SeasonalResidual, cfg: AnomalySection) -> None:
        """End the seasonal incident once a new span is back within ``min_z`` of the season."""
        if season.version == self._episode_version:
            return
        self._episode_version = season.version
        base = season.last_span(tolerance=_slots(season, cfg.seasonal_tolerance_s))
        z_s = 0.0 if base is None else self._seasonal_z(base, cfg)
        if z_s * self._episode_sign < cfg.min_z * self.sensitivity:
            self.seasonal_episode = False

    @staticmethod
    def _seasonal_z(base: SeasonalBaseline, cfg: AnomalySection) -> float:
        """Signed robust z of a span against its past periods (0 while the spread is unknown).

        The size is the distance to the *nearest* past value (as the residual measures it;
        within the tolerance envelope when one is given), the sign the side of the median;
        the scale is the period-over-period spread, never below ``min_relative_change`` of
        the expected level.
        """
        if not math.isfinite(base.spread):
            return 0.0
        scale = max(base.spread, cfg.min_relative_change * abs(base.expected), _TINY)
        deviation = math.copysign(abs(base.observed - base.nearest), base.observed - base.expected)
        return deviation / scale

    def _explained(self, value: float, recent_scale: float, cfg: AnomalySection) -> bool:
        """Whether the season explains ``value``: close to the same time of a past period.

        Only for a series the season explains (the detector's gate). "The same time" allows
        ``seasonal_tolerance_s`` either way (a surge a few minutes early or late is the usual
        surge); "close" is ``min_z`` times the larger of the seasonal spread and the recent
        window's scale (a raw point is noisier than a bin mean).
        """
        season = self.detector.season
        if season is None or not self.detector.seasonal:
            return False
        base = season.at_latest(value, tolerance=_slots(season, cfg.seasonal_tolerance_s))
        if base is None:
            return False
        spread = base.spread if math.isfinite(base.spread) else 0.0
        scale = max(spread, recent_scale, cfg.min_relative_change * abs(base.nearest), _TINY)
        return abs(value - base.nearest) < cfg.min_z * self.sensitivity * scale


def _slots(season: SeasonalResidual, tolerance_s: float) -> int:
    """The tolerance in remembered values (bins or points) of ``season``."""
    slot_s = season.slot_s
    return math.ceil(tolerance_s / slot_s - 1e-9) if slot_s > 0 else 0


@dataclass
class _EntityState:
    features: tuple[str, ...]
    multivariate: MultivariateDetector | None
    last_prediction_s: dict[tuple[str, str], float] = field(default_factory=dict)


class DetectorService:
    """Observations in, :class:`Finding` out; also takes operator feedback.

    Args:
        settings: The ``anomaly`` settings section.
        instance: This replica's id (echoed in findings).
    """

    def __init__(self, settings: AnomalySection, *, instance: str = "local") -> None:
        self.settings = settings
        self.instance = instance
        self.series_config = SeriesConfig(warmup_points=settings.warmup_points)
        self._series: OrderedDict[tuple[str, str], SeriesState] = OrderedDict()
        self._entities: dict[str, _EntityState] = {}
        self._alerts: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._pending_feedback: OrderedDict[tuple[str, str], list[tuple[Feedback, float | None]]]
        self._pending_feedback = OrderedDict()
        self.observations = 0
        self.findings = 0
        self.feedback_applied = 0

    # -- state -------------------------------------------------------------------------------

    def _new_series(self, key: tuple[str, str]) -> SeriesState:
        cfg = self.settings
        state = SeriesState(
            detector=SeriesDetector(self.series_config),
            threshold=AdaptiveThreshold(
                target_rate=0.01, initial=cfg.series_cut_floor, floor=cfg.series_cut_floor
            ),
            window=RobustWindow(cfg.robust_window, min_relative=cfg.min_relative_change),
            trend=TrendWindow(cfg.trend_points),
        )
        for kind, score in self._pending_feedback.pop(key, []):
            self._apply(state, kind, score)
        return state

    def series(self, entity: str, metric: str) -> SeriesState | None:
        """The state of one series, if tracked."""
        return self._series.get((entity, metric))

    def _state(self, key: tuple[str, str]) -> SeriesState:
        state = self._series.get(key)
        if state is None:
            state = self._new_series(key)
            self._series[key] = state
            if len(self._series) > self.settings.max_series:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        return state

    def _entity(self, obs: Observation) -> _EntityState:
        state = self._entities.get(obs.entity)
        if state is None:
            features = tuple(sorted(obs.values)[:_MAX_MV_FEATURES])
            mv = (
                MultivariateDetector(features, window=256, refit_every=64, n_estimators=25)
                if self.settings.multivariate
                else None
            )
            state = _EntityState(features, mv)
            self._entities[obs.entity] = state
        return state

    @property
    def series_count(self) -> int:
        """Series tracked."""
        return len(self._series)

    # -- observing ---------------------------------------------------------------------------

    def observe(self, obs: Observation, *, emit: bool = True) -> list[Finding]:
        """Score and learn one observation; return what to publish.

        With ``emit`` off (the replay that rebuilds the models on start) nothing is returned,
        but alerts that would have fired still start their cool-down, so an incident alerted
        before a restart is not alerted again.
        """
        self.observations += 1
        entity = self._entity(obs)
        contributions: dict[str, float] = {}
        mv_anomaly = False
        if entity.multivariate is not None and any(f in obs.values for f in entity.features):
            mv = entity.multivariate.update(obs.timestamp_s, obs.values)
            contributions = mv.contributions
            mv_anomaly = mv.is_anomaly
        verdicts = [
            self._verdict(obs, metric, value) for metric, value in sorted(obs.values.items())
        ]
        if not emit:
            return []
        findings: list[Finding] = []
        alerting = [v for v in verdicts if v.path is not None]
        if alerting:
            findings.append(self._anomaly(obs, alerting, verdicts, contributions, mv_anomaly))
        findings.extend(self._predictions(obs, entity))
        self.findings += len(findings)
        return findings

    def _verdict(self, obs: Observation, metric: str, value: float) -> _Verdict:
        state = self._state((obs.entity, metric))
        return state.update(metric, obs.timestamp_s, value, self.settings)

    def _confidence(self, verdict: _Verdict, *, mv_anomaly: bool) -> float:
        c_z = 1.0 - math.exp(-abs(verdict.z) / (2.0 * self.settings.min_z))
        miss = (1.0 - c_z) * (0.5 if verdict.cut_hit else 1.0) * (0.5 if mv_anomaly else 1.0)
        return round(1.0 - miss, 4)

    def evidence(self, obs: Observation) -> dict[str, Any]:
        """Where the raw observations behind a finding can be read back."""
        start, end = iso(obs.timestamp_s - self.settings.evidence_window_s), iso(obs.timestamp_s)
        stream = obs.evidence_stream or "SYSTEM_EVENTS"
        link = f"backbone://streams/{stream}?start_time={start}&end_time={end}"
        if obs.evidence_subject:
            link += f"&subject={obs.evidence_subject}"
        evidence: dict[str, Any] = {
            "stream": stream,
            "start_time": start,
            "end_time": end,
            "link": link,
        }
        if obs.evidence_subject:
            evidence["subject"] = obs.evidence_subject
        return evidence

    def _anomaly(
        self,
        obs: Observation,
        alerting: list[_Verdict],
        verdicts: list[_Verdict],
        contributions: dict[str, float],
        mv_anomaly: bool,
    ) -> Finding:
        alerting.sort(key=lambda v: -abs(v.z))
        primary = alerting[0]
        # Root-cause hints: the multivariate detector's per-metric contributions once it is fit,
        # the per-series robust z-scores before that. A seasonal departure leads: nothing in
        # the recent window explains it.
        ranked = contributions or {v.metric: abs(v.z) for v in verdicts}
        hints: list[dict[str, Any]] = [
            {
                "feature": v.metric,
                "z": round(abs(v.z), 3),
                "basis": BASIS_SEASONAL,
                "expected": round(v.seasonal.expected, 6),
                "observed": round(v.seasonal.observed, 6),
                "deviation": round(v.seasonal.observed - v.seasonal.expected, 6),
            }
            for v in alerting
            if v.seasonal is not None
        ][:_MAX_HINTS]
        named = {h["feature"] for h in hints}
        hints += [
            {"feature": name, "z": round(ranked[name], 3), "basis": BASIS_RECENT}
            for name in sorted(ranked, key=lambda n: -ranked[n])
            if name not in named
        ][: _MAX_HINTS - len(hints)]
        confidence = self._confidence(primary, mv_anomaly=mv_anomaly)
        evidence = self.evidence(obs)
        data: dict[str, Any] = {
            "entity": obs.entity,
            "entity_kind": obs.kind,
            "metric": primary.metric,
            "value": primary.value,
            "expected": _finite(primary.expected),
            "basis": primary.basis,
            "score": round(max(primary.score, confidence if primary.path else 0.0), 4),
            "series_score": round(primary.score, 4),
            "confidence": confidence,
            "detector": primary.path,
            "metrics": [self._metric_entry(v) for v in alerting],
            "root_cause_hints": hints,
            "evidence": evidence,
            "observed_at": iso(obs.timestamp_s),
            "detector_instance": self.instance,
        }
        if primary.seasonal is not None:
            data["seasonal"] = self._seasonal_data(primary)
            data["summary"] = self._seasonal_summary(obs.entity, primary)
            evidence["previous_periods"] = self._previous_periods(obs, primary.seasonal)
        if primary.escalates is not None:
            data["escalation_of"] = {
                "alerted_at": iso(primary.escalates.since_s),
                "value": primary.escalates.level,
                "baseline": round(primary.escalates.baseline, 6),
            }
        if obs.kind == "service":
            data["service"] = obs.entity
        finding_id = str(uuid.uuid4())
        self.remember_alert(finding_id, obs.entity, primary.metric, primary.score)
        suggestions = tuple(
            suggest(
                finding="anomaly",
                entity=obs.entity,
                kind=obs.kind,
                metric=primary.metric,
                confidence=confidence,
                breakers=self.settings.actions.breakers,
                throttle=self.throttle(obs, primary.value),
                rising=primary.z > 0,
            )
        )
        return Finding(ANOMALY_TYPE, finding_id, obs.entity, obs.timestamp_s, data, suggestions)

    def _metric_entry(self, v: _Verdict) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "metric": v.metric,
            "value": v.value,
            "expected": _finite(v.expected),
            "z": round(v.z, 3),
            "basis": v.basis,
            "score": round(v.score, 4),
            "threshold": round(v.threshold, 4),
            "detector": v.path,
        }
        if v.seasonal is not None:
            entry["seasonal"] = self._seasonal_data(v)
        return entry

    def _seasonal_data(self, v: _Verdict) -> dict[str, Any]:
        """The seasonal comparison behind an alert, for the event (operators read this)."""
        base = v.seasonal
        assert base is not None  # noqa: S101 - only called for seasonal verdicts
        return {
            "period_s": self.series_config.season_s,
            "since": iso(v.seasonal_since_s),
            "window_start": iso(base.start_s),
            "window_end": iso(base.end_s),
            "observed": round(base.observed, 6),
            "expected": round(base.expected, 6),
            "previous": [round(p, 6) for p in base.past],
            "deviation": round(base.observed - base.expected, 6),
            "spread": round(base.spread, 6),
            "z": round(v.z, 3),
        }

    def _seasonal_summary(self, entity: str, v: _Verdict) -> str:
        base = v.seasonal
        assert base is not None  # noqa: S101 - only called for seasonal verdicts
        period_s = self.series_config.season_s
        past = len(base.past)
        tolerance = f"{self.settings.seasonal_tolerance_s / 60:g} min early or late"
        when = (
            f"the previous {past} day{'s' if past > 1 else ''}"
            if period_s == _DAY_S
            else f"the previous {past} period{'s' if past > 1 else ''} of {period_s:g} s"
        )
        since = iso(v.seasonal_since_s)[11:16]
        start, end = iso(base.start_s)[11:16], iso(base.end_s)[11:16]
        side = "below" if v.z < 0 else "above"
        return (
            f"{entity} {v.metric} is {side} its usual level for this time of day since "
            f"{since} UTC: {base.observed:.4g} on average over {start}-{end} UTC, where "
            f"{when} had {base.expected:.4g} (median of "
            f"{', '.join(f'{p:.4g}' for p in base.past)}); {abs(v.z):.1f} robust spreads "
            f"{side} even allowing the usual level to come {tolerance}."
        )

    def _previous_periods(self, obs: Observation, base: SeasonalBaseline) -> list[dict[str, Any]]:
        """Evidence links to the same window on the previous periods (the expected shape)."""
        period_s = self.series_config.season_s
        stream = obs.evidence_stream or "SYSTEM_EVENTS"
        out: list[dict[str, Any]] = []
        for k in range(1, len(base.past) + 1):
            start, end = iso(base.start_s - k * period_s), iso(base.end_s - k * period_s)
            link = f"backbone://streams/{stream}?start_time={start}&end_time={end}"
            if obs.evidence_subject:
                link += f"&subject={obs.evidence_subject}"
            out.append({"start_time": start, "end_time": end, "link": link})
        return out

    def _limit(self, obs: Observation, metric: str, state: SeriesState) -> tuple[str, float] | None:
        cfg = self.settings
        if metric in obs.limits:
            return "stream_limit", obs.limits[metric]
        if obs.kind != "service":
            return None
        if metric == _ERROR_RATIO_METRIC:
            return "error_rate", cfg.error_ratio_threshold
        if metric.endswith(_LATENCY_SUFFIX):
            med, _ = state.window.stats()
            base = med if math.isfinite(med) else 0.0
            return "latency", max(cfg.latency_threshold_min_ms, cfg.latency_threshold_factor * base)
        return None

    def _predictions(self, obs: Observation, entity: _EntityState) -> list[Finding]:
        cfg = self.settings
        findings: list[Finding] = []
        for metric in sorted(obs.values):
            state = self._series.get((obs.entity, metric))
            if state is None or len(state.trend) < max(cfg.trend_points // 2, 4):
                continue
            rule = self._limit(obs, metric, state)
            if rule is None:
                continue
            kind, limit = rule
            trend = state.trend.fit()
            if trend is None or trend.agreement < _TREND_AGREEMENT:
                continue
            eta = trend.time_to_reach(limit)
            if eta is None or eta <= 0 or eta > cfg.horizon_s:
                continue
            key = (metric, kind)
            if (
                obs.timestamp_s - entity.last_prediction_s.get(key, -math.inf)
                < cfg.alert_cooldown_s
            ):
                continue
            entity.last_prediction_s[key] = obs.timestamp_s
            confidence = round(trend.agreement, 4)
            data: dict[str, Any] = {
                "entity": obs.entity,
                "entity_kind": obs.kind,
                "metric": metric,
                "kind": kind,
                "horizon_s": cfg.horizon_s,
                "current": round(trend.level, 6),
                "limit": limit,
                "predicted": round(trend.forecast(obs.timestamp_s + cfg.horizon_s), 6),
                "eta_s": round(eta, 3),
                "crosses_at": iso(obs.timestamp_s + eta),
                "slope_per_s": trend.slope_per_s,
                "confidence": confidence,
                "evidence": self.evidence(obs),
                "observed_at": iso(obs.timestamp_s),
                "detector_instance": self.instance,
            }
            if obs.kind == "service":
                data["service"] = obs.entity
            suggestions = tuple(
                suggest(
                    finding=f"prediction.{kind}",
                    entity=obs.entity,
                    kind=obs.kind,
                    metric=metric,
                    confidence=confidence,
                    breakers=cfg.actions.breakers,
                    throttle=self.throttle(obs, _ingress_rate(obs, trend.slope_per_s)),
                )
            )
            findings.append(
                Finding(
                    PREDICTION_TYPE_PREFIX + kind,
                    str(uuid.uuid4()),
                    obs.entity,
                    obs.timestamp_s,
                    data,
                    suggestions,
                )
            )
        return findings

    def throttle(self, obs: Observation, observed_per_s: float | None) -> Throttle | None:
        """The limiter admitting the producers of ``obs``'s stream, and the rate to set.

        None when no limiter is configured for the stream (``actions.producers``) or no
        positive rate was observed: the throttle then stays a suggestion.
        """
        acts = self.settings.actions
        producer = acts.producers.get(obs.evidence_stream or "")
        if producer is None or observed_per_s is None or not math.isfinite(observed_per_s):
            return None
        if observed_per_s <= 0:
            return None
        service, _, limiter = producer.partition("/")
        rate = max(acts.throttle_min_rate_per_s, round(acts.throttle_fraction * observed_per_s, 3))
        return Throttle(service, limiter, rate, round(observed_per_s, 3))

    # -- feedback ----------------------------------------------------------------------------

    def remember_alert(self, alert_id: str, entity: str, metric: str, score: float) -> None:
        """Index an alert so feedback quoting only its id can find its series."""
        self._alerts[alert_id] = (entity, metric, score)
        while len(self._alerts) > _MAX_ALERT_INDEX:
            self._alerts.popitem(last=False)

    def alert(self, alert_id: str) -> tuple[str, str, float] | None:
        """``(entity, metric, score)`` of a remembered alert."""
        return self._alerts.get(alert_id)

    def _apply(self, state: SeriesState, kind: Feedback, score: float | None) -> None:
        threshold = state.threshold
        before = threshold.value
        if kind is Feedback.FALSE_POSITIVE:
            state.sensitivity = min(state.sensitivity * _FP_FACTOR, _SENSITIVITY_MAX)
        else:
            state.sensitivity = max(state.sensitivity * _MISSED_FACTOR, _SENSITIVITY_MIN)
            threshold.floor = max(self.settings.series_cut_min, threshold.floor * _MISSED_FACTOR)
        after = threshold.feedback(kind, score=score)
        if kind is Feedback.FALSE_POSITIVE:
            # When the score quantile sits below the floor, the threshold's own offset is
            # swallowed by the clamp; lift the floor so the cut really passes the noisy score.
            wanted = max(before, score if score is not None else before)
            if after <= wanted:
                threshold.floor = min(
                    threshold.ceiling, wanted + threshold.step * max(1.0 - wanted, 1e-3)
                )

    def apply_feedback(
        self,
        kind: Feedback | str,
        *,
        entity: str | None = None,
        metric: str | None = None,
        score: float | None = None,
        alert_id: str | None = None,
    ) -> bool:
        """Apply operator feedback to one series.

        The series is named by ``entity``/``metric`` or found from ``alert_id``. Feedback for a
        series not tracked yet is kept (bounded) and applied when it appears.

        Returns:
            Whether the series was known (now or from the alert index).
        """
        kind = Feedback(kind)
        if (entity is None or metric is None) and alert_id is not None:
            known = self.alert(alert_id)
            if known is None:
                return False
            entity, metric, remembered = known
            score = remembered if score is None else score
        if entity is None or metric is None:
            return False
        state = self._series.get((entity, metric))
        if state is None:
            pending = self._pending_feedback.setdefault((entity, metric), [])
            pending.append((kind, score))
            while len(self._pending_feedback) > _MAX_PENDING_FEEDBACK:
                self._pending_feedback.popitem(last=False)
        else:
            self._apply(state, kind, score)
        self.feedback_applied += 1
        return True


def _ingress_rate(obs: Observation, slope_per_s: float) -> float | None:
    """What producers write into ``obs``'s stream per second, as far as ``obs`` tells.

    A stream's own growth rate; for a consumer, what it delivers plus how fast its backlog grows.
    """
    if _RATE_METRIC in obs.values:
        return obs.values[_RATE_METRIC]
    if _DELIVERED_METRIC in obs.values:
        return obs.values[_DELIVERED_METRIC] + max(slope_per_s, 0.0)
    return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
