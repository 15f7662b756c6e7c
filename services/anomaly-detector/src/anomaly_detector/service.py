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
* a :class:`~anomaly_detector.features.TrendWindow` for predictions.

An alert fires when the series is warm, the value is significant, and the adaptive cut or the
sustained path says so, outside the series' cool-down (event time): one incident, one alert.
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

    def update(
        self, metric: str, timestamp_s: float, value: float, cfg: AnomalySection
    ) -> _Verdict:
        """Score one point with the past, then learn it."""
        z = self.window.zscore(value)
        med, _ = self.window.stats()
        score = self.detector.update(timestamp_s, value)
        cut = self.threshold.value
        cut_hit = self.threshold.observe(score.score)
        self.over = self.over + 1 if abs(z) >= cfg.sustained_z * self.sensitivity else 0
        warm = self.points >= cfg.warmup_points
        significant = abs(z) >= cfg.min_z * self.sensitivity
        sustained = self.over >= cfg.sustained_points
        cooling = timestamp_s - self.last_alert_s < cfg.alert_cooldown_s
        path: str | None = None
        if warm and significant and not cooling and (cut_hit or sustained):
            path = "series" if cut_hit else "sustained"
            self.last_alert_s = timestamp_s
        self.window.add(value)
        self.trend.add(timestamp_s, value)
        self.points += 1
        expected = score.expected if math.isfinite(score.expected) else med
        return _Verdict(metric, value, z, score.score, cut, expected, cut_hit, path)


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
        # the per-series robust z-scores before that.
        ranked = contributions or {v.metric: abs(v.z) for v in verdicts}
        hints = [
            {"feature": name, "z": round(ranked[name], 3)}
            for name in sorted(ranked, key=lambda n: -ranked[n])[:_MAX_HINTS]
        ]
        confidence = self._confidence(primary, mv_anomaly=mv_anomaly)
        data: dict[str, Any] = {
            "entity": obs.entity,
            "entity_kind": obs.kind,
            "metric": primary.metric,
            "value": primary.value,
            "expected": _finite(primary.expected),
            "score": round(max(primary.score, confidence if primary.path else 0.0), 4),
            "series_score": round(primary.score, 4),
            "confidence": confidence,
            "detector": primary.path,
            "metrics": [
                {
                    "metric": v.metric,
                    "value": v.value,
                    "expected": _finite(v.expected),
                    "z": round(v.z, 3),
                    "score": round(v.score, 4),
                    "threshold": round(v.threshold, 4),
                    "detector": v.path,
                }
                for v in alerting
            ],
            "root_cause_hints": hints,
            "evidence": self.evidence(obs),
            "observed_at": iso(obs.timestamp_s),
            "detector_instance": self.instance,
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
