"""NATS glue: snapshot handler, JetStream stats poller, replay, feedback follower, finding sink.

Everything here parses, delegates to :class:`~anomaly_detector.service.DetectorService` and
publishes; the decisions live in ``service.py`` and ``actions.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import nats.errors
import nats.js.errors
from nats.js import api

from anomaly_detector.actions import (
    REVERT_OPS,
    THROTTLE_PRODUCER,
    ActionGate,
    AppliedAction,
    Suggestion,
)
from anomaly_detector.features import (
    JETSTREAM_METRICS_TYPE,
    JETSTREAM_SNAPSHOT,
    ConsumerStat,
    Observation,
    StatsTracker,
    StreamStat,
    iso,
    snapshot_observation,
    stats_snapshot,
)
from anomaly_detector.service import (
    APPLIED_TYPE,
    FEEDBACK_TYPE_PREFIX,
    SOURCE,
    SUGGESTED_TYPE,
    DetectorService,
    Finding,
)
from backbone.errors import EventError
from backbone.events import CloudEvent, decode_nats
from backbone.messaging import dlq_subject
from backbone.resilience import request_all
from backbone.telemetry import METRICS_EVENT_TYPE_PREFIX

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from anomaly_detector.settings import ActionSettings
    from backbone.messaging import Delivery
    from backbone.telemetry import Metrics

log = logging.getLogger(__name__)

SYSTEM_STREAM: Final = "SYSTEM_EVENTS"
AI_STREAM: Final = "AI_EVENTS"
DLQ_STREAM: Final = "DLQ"
METRICS_FILTER: Final = METRICS_EVENT_TYPE_PREFIX + ">"
FEEDBACK_FILTER: Final = FEEDBACK_TYPE_PREFIX + ">"
_REPLAY_BATCH: Final = 256
_REPLAY_FETCH_TIMEOUT_S: Final = 1.0
_EPHEMERAL_INACTIVE_S: Final = 60.0
_MAX_UNPUBLISHED: Final = 1000


class FindingSink:
    """Publishes findings, their suggestions, and applies (then expires) automatic actions.

    Args:
        publish: Publishes one CloudEvent and waits for the PubAck (``Publisher.publish``).
        nc: NATS client for control requests.
        gate: Decides which suggestions are applied.
        settings: The ``actions`` settings.
        metrics: Prometheus counters live here.
    """

    def __init__(
        self,
        *,
        publish: Callable[[CloudEvent], Awaitable[Any]],
        nc: Client | None,
        gate: ActionGate,
        settings: ActionSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self._publish = publish
        self._nc = nc
        self.gate = gate
        self.settings = settings
        self._emitted = (
            metrics.counter(
                "anomaly_events_emitted_total", "Events emitted by the detector", ("type",)
            )
            if metrics is not None
            else None
        )
        self._lock = asyncio.Lock()

    async def _emit(self, event: CloudEvent) -> None:
        await self._publish(event)
        if self._emitted is not None:
            self._emitted.labels(type=event.type).inc()

    async def publish(self, findings: list[Finding]) -> None:
        """Publish each finding, then its suggestions (applying the allowed ones)."""
        for finding in findings:
            await self._emit(
                CloudEvent.create(
                    type=finding.type,
                    source=SOURCE,
                    id=finding.id,
                    subject=finding.subject,
                    time=datetime.fromtimestamp(finding.timestamp_s, UTC),
                    data=finding.data,
                )
            )
            for suggestion in finding.suggestions:
                await self._suggest(finding, suggestion)

    async def _suggest(self, finding: Finding, suggestion: Suggestion) -> None:
        # One lock: two findings at once must not both pass the rate limit.
        async with self._lock:
            decision = self.gate.decide(suggestion)
            # Deterministic: a retried snapshot re-publishes the same suggestion (deduplicated).
            suggestion_id = str(
                uuid.uuid5(
                    uuid.NAMESPACE_URL, f"{finding.id}/{suggestion.action}/{suggestion.target}"
                )
            )
            data: dict[str, Any] = {
                "action": suggestion.action,
                "target": suggestion.target,
                "reason": suggestion.reason,
                "confidence": suggestion.confidence,
                "executable": suggestion.executable,
                "auto": decision.reason,
                "entity": finding.subject,
                "metric": finding.data.get("metric"),
                "trigger": {"id": finding.id, "type": finding.type},
            }
            if suggestion.executable:
                data.update(op=suggestion.op, service=suggestion.service, **_instance(suggestion))
            await self._emit(
                CloudEvent.create(
                    type=SUGGESTED_TYPE,
                    source=SOURCE,
                    id=suggestion_id,
                    subject=suggestion.target,
                    data=data,
                )
            )
            if decision.apply:
                await self._apply(finding, suggestion, suggestion_id)

    async def _control(
        self, service: str, op: str, name: str | None, *, rate_per_s: float | None = None
    ) -> list[dict[str, Any]]:
        if self._nc is None:
            return []
        return await request_all(
            self._nc,
            service,
            op,
            name=name,
            timeout_s=self.settings.control_timeout_s,
            rate_per_s=rate_per_s,
        )

    @staticmethod
    def _result(replies: list[dict[str, Any]]) -> str:
        if not replies:
            return "no_reply"
        return "ok" if any(r.get("ok") for r in replies) else "failed"

    @staticmethod
    def _summary(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "replica": r.get("replica"),
                "ok": r.get("ok"),
                "error": r.get("error"),
                "instances": [i.get("name") for i in r.get("instances") or []],
            }
            for r in replies
        ]

    async def _apply(self, finding: Finding, suggestion: Suggestion, suggestion_id: str) -> None:
        assert suggestion.service is not None  # noqa: S101 - executable implies a service
        assert suggestion.op is not None  # noqa: S101
        replies = await self._control(
            suggestion.service, suggestion.op, suggestion.name, rate_per_s=suggestion.rate_per_s
        )
        action_id = str(uuid.uuid4())
        result = self._result(replies)
        applied = self.gate.record(action_id, suggestion)
        if result != "ok":
            self.gate.forget(suggestion.target)  # nothing to revert
        await self._emit(
            CloudEvent.create(
                type=APPLIED_TYPE,
                source=SOURCE,
                id=action_id,
                subject=suggestion.target,
                data={
                    "action": suggestion.action,
                    "target": suggestion.target,
                    "result": result,
                    "op": suggestion.op,
                    "service": suggestion.service,
                    **_instance(suggestion),
                    "subject": f"backbone.control.{suggestion.service}.resilience",
                    "reason": suggestion.reason,
                    "expires_at": iso(applied.expires_at_s) if result == "ok" else None,
                    "suggestion_id": suggestion_id,
                    "trigger": {"id": finding.id, "type": finding.type},
                    "replies": self._summary(replies),
                },
            )
        )
        log.warning(
            "applied %s on %s: %s",
            suggestion.action,
            suggestion.target,
            result,
        )

    async def expire_due(self) -> list[AppliedAction]:
        """Revert the applied actions whose time is up; each revert is an ``ai.action.applied``."""
        expired = self.gate.due()
        for action in expired:
            suggestion = action.suggestion
            if suggestion.service is None or suggestion.action not in REVERT_OPS:
                continue
            revert, op = REVERT_OPS[suggestion.action]
            replies = await self._control(suggestion.service, op, suggestion.name)
            instance = _instance(suggestion)
            instance.pop("rate_per_s", None)
            await self._emit(
                CloudEvent.create(
                    type=APPLIED_TYPE,
                    source=SOURCE,
                    subject=suggestion.target,
                    data={
                        "action": revert,
                        "target": suggestion.target,
                        "result": self._result(replies),
                        "op": op,
                        "service": suggestion.service,
                        **instance,
                        "subject": f"backbone.control.{suggestion.service}.resilience",
                        "reason": "expired",
                        "reverts": action.id,
                        "replies": self._summary(replies),
                    },
                )
            )
        return expired


def _instance(suggestion: Suggestion) -> dict[str, Any]:
    """The control target of an executable suggestion, as event data fields."""
    if suggestion.action == THROTTLE_PRODUCER:
        return {"limiter": suggestion.name, "rate_per_s": suggestion.rate_per_s}
    return {"breaker": suggestion.name}


class SnapshotHandler:
    """Handler of the durable ``system.metrics.>`` consumer.

    Messages up to ``replayed_through_seq`` were already learned by the start-up replay and are
    acknowledged without being learned twice; snapshots of entities another replica owns are
    acknowledged and ignored, and so are ``system.metrics.jetstream`` snapshots: the replica
    that published one had learned it while polling (they are for the replay).
    """

    def __init__(
        self,
        service: DetectorService,
        sink: FindingSink,
        *,
        owns: Callable[[str], bool],
        replayed_through_seq: int = 0,
    ) -> None:
        self.service = service
        self.sink = sink
        self.owns = owns
        self.replayed_through_seq = replayed_through_seq
        self.handled = 0
        # Findings of a snapshot whose publishing failed: its redelivery publishes them again
        # (same ids, deduplicated) instead of learning the snapshot twice.
        self._unpublished: dict[int, list[Finding]] = {}

    async def __call__(self, event: CloudEvent, delivery: Delivery) -> None:
        """Learn one snapshot and publish what it revealed."""
        seq = delivery.stream_seq
        if seq <= self.replayed_through_seq or event.type == JETSTREAM_METRICS_TYPE:
            return
        findings = self._unpublished.pop(seq, None)
        if findings is None:
            obs = snapshot_observation(event)
            if obs is None or not self.owns(obs.entity):
                return
            self.handled += 1
            findings = self.service.observe(obs)
        try:
            await self.sink.publish(findings)
        except Exception:
            if len(self._unpublished) < _MAX_UNPUBLISHED:
                self._unpublished[seq] = findings
            raise


def stream_stat(info: api.StreamInfo) -> StreamStat:
    """Plain numbers from a nats-py stream info."""
    config = info.config
    return StreamStat(
        name=config.name or "",
        messages=info.state.messages,
        bytes=info.state.bytes,
        last_seq=info.state.last_seq,
        consumers=info.state.consumer_count,
        max_msgs=config.max_msgs if config.max_msgs is not None else -1,
        max_bytes=config.max_bytes if config.max_bytes is not None else -1,
    )


def consumer_stat(info: api.ConsumerInfo) -> ConsumerStat:
    """Plain numbers from a nats-py consumer info."""
    return ConsumerStat(
        stream=info.stream_name,
        name=info.name,
        pending=info.num_pending or 0,
        ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
        waiting=info.num_waiting or 0,
        delivered_seq=info.delivered.consumer_seq if info.delivered is not None else 0,
    )


class StatsPoller:
    """Polls ``$JS.API`` stream and consumer info and feeds the owned entities to the service.

    Only durable consumers are tracked (ephemeral ones come and go with random names). The
    per-type rates use one stream-info call with a subjects filter per configured stream, plus
    one on DLQ for the dead-letter shares.

    With ``publish`` given, each poll's owned observations are also published as one
    ``system.metrics.jetstream`` snapshot (SYSTEM_EVENTS), so the start-up replay of a
    restarted replica (or of the replica that owns them after a re-split) rebuilds these
    series too; a failed snapshot publish is logged and does not fail the poll.
    """

    def __init__(
        self,
        js: JetStreamContext,
        service: DetectorService,
        sink: FindingSink,
        *,
        owns: Callable[[str], bool],
        type_rate_streams: list[str],
        max_types: int = 200,
        clock: Callable[[], float] = time.time,
        publish: Callable[[CloudEvent], Awaitable[Any]] | None = None,
        instance: str = "local",
    ) -> None:
        self._js = js
        self._publish = publish
        self.instance = instance
        self._last_poll_s: float | None = None
        self.snapshots = 0
        self.service = service
        self.sink = sink
        self.owns = owns
        self.type_rate_streams = type_rate_streams
        self.tracker = StatsTracker(max_types=max_types)
        self.clock = clock
        self.polls = 0
        self.last_error: str | None = None

    async def observations(self) -> list[Observation]:
        """One poll's observations of the owned entities."""
        # Millisecond resolution: the snapshot's CloudEvent time carries it exactly, so the
        # replayed points have the very timestamps the live models saw.
        now = round(self.clock(), 3)
        observations: list[Observation] = []
        infos = await self._js.streams_info()
        names = set()
        for info in infos:
            stat = stream_stat(info)
            names.add(stat.name)
            obs = self.tracker.stream(stat, now)
            if self.owns(obs.entity):
                observations.append(obs)
            for cinfo in await self._js.consumers_info(stat.name):
                if not cinfo.config.durable_name:
                    continue
                cobs = self.tracker.consumer(
                    consumer_stat(cinfo), now, stream_max_msgs=stat.max_msgs
                )
                if self.owns(cobs.entity):
                    observations.append(cobs)
        typed = [s for s in self.type_rate_streams if s in names]
        if typed and self.tracker.max_types > 0:
            dlq: dict[str, int] = {}
            if DLQ_STREAM in names:
                dlq = (
                    await self._js.stream_info(DLQ_STREAM, subjects_filter=dlq_subject(">"))
                ).state.subjects or {}
            for stream in typed:
                counts = (await self._js.stream_info(stream, subjects_filter=">")).state.subjects
                observations.extend(
                    o
                    for o in self.tracker.event_types(stream, counts or {}, dlq, now)
                    if self.owns(o.entity)
                )
        return observations

    async def poll_once(self) -> int:
        """Poll, observe, publish; returns the number of observations."""
        observations = await self.observations()
        findings = [self.service.observe(obs) for obs in observations]
        await self._snapshot(observations)
        for found in findings:
            await self.sink.publish(found)
        self.polls += 1
        return len(observations)

    async def _snapshot(self, observations: list[Observation]) -> None:
        if self._publish is None or not observations:
            return
        now = observations[0].timestamp_s
        interval_s = 0.0 if self._last_poll_s is None else max(now - self._last_poll_s, 0.0)
        self._last_poll_s = now
        event = CloudEvent.create(
            type=JETSTREAM_METRICS_TYPE,
            source=f"{SOURCE}/{JETSTREAM_SNAPSHOT}",
            subject=self.instance,
            time=datetime.fromtimestamp(now, UTC),
            data=stats_snapshot(observations, instance=self.instance, interval_s=interval_s),
        )
        try:
            await self._publish(event)
        except Exception as exc:  # noqa: BLE001 - the live models already learned the poll
            log.warning("cannot publish the JetStream stats snapshot: %s", exc)
        else:
            self.snapshots += 1

    async def run(self, stop: asyncio.Event, *, interval_s: float) -> None:
        """Poll every ``interval_s`` until ``stop`` is set; failures are logged, never fatal."""
        while not stop.is_set():
            try:
                await self.poll_once()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a failed poll must not end polling
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("JetStream stats poll failed: %s", self.last_error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await stop.wait()


async def _ephemeral(
    js: JetStreamContext, *, stream: str, subject: str, config: api.ConsumerConfig
) -> tuple[Any, str]:
    config.ack_policy = api.AckPolicy.NONE
    config.inactive_threshold = _EPHEMERAL_INACTIVE_S
    config.mem_storage = True
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    return sub, config.name or ""


async def replay(
    js: JetStreamContext,
    *,
    stream: str,
    subject: str,
    start_time: datetime,
    through_seq: int,
    max_messages: int,
    handle: Callable[[CloudEvent], None],
) -> int:
    """Feed ``handle`` every message of ``subject`` from ``start_time`` through ``through_seq``.

    An ephemeral, unacknowledged consumer reads the range; it is deleted afterwards.

    Returns:
        The number of messages handled.
    """
    if through_seq <= 0 or max_messages <= 0:
        return 0
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=start_time
    )
    sub, name = await _ephemeral(js, stream=stream, subject=subject, config=config)
    handled = 0
    try:
        while handled < max_messages:
            try:
                msgs = await sub.fetch(_REPLAY_BATCH, timeout=_REPLAY_FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                break  # nothing (more) in range
            done = False
            batch: list[CloudEvent] = []
            for msg in msgs:
                meta = msg.metadata
                if meta.sequence.stream > through_seq:
                    done = True
                    break
                with contextlib.suppress(EventError):
                    batch.append(decode_nats(msg.headers or {}, msg.data))
                if meta.sequence.stream >= through_seq or meta.num_pending == 0:
                    done = True
                    break
            # Learning is CPU work (IsolationForest refits): off the event loop, so /livez and
            # the NATS client keep answering while a long history is replayed.
            await asyncio.to_thread(_handle_all, handle, batch)
            handled += len(batch)
            if done:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return handled


def _handle_all(handle: Callable[[CloudEvent], None], events: list[CloudEvent]) -> None:
    for event in events:
        handle(event)


class FeedbackFollower:
    """Applies operator feedback (``ai.feedback.*``) to the series this replica owns.

    Every replica reads every feedback event, history first, then live. Feedback is a durable
    fact on AI_EVENTS, so a restart replays it onto the rebuilt models.
    """

    def __init__(
        self,
        js: JetStreamContext,
        service: DetectorService,
        *,
        owns: Callable[[str], bool],
        since: datetime,
    ) -> None:
        self._js = js
        self.service = service
        self.owns = owns
        self.since = since
        self.applied = 0
        self._last_seq = 0

    def handle(self, event: CloudEvent) -> bool:
        """Apply one feedback event; returns whether it concerned this replica."""
        kind = event.type.removeprefix(FEEDBACK_TYPE_PREFIX)
        data = event.data if isinstance(event.data, dict) else {}
        entity, metric = data.get("entity"), data.get("metric")
        alert_id = data.get("alert_id")
        score = data.get("score")
        if isinstance(entity, str) and not self.owns(entity):
            return False
        try:
            applied = self.service.apply_feedback(
                kind,
                entity=entity if isinstance(entity, str) else None,
                metric=metric if isinstance(metric, str) else None,
                score=float(score) if isinstance(score, int | float) else None,
                alert_id=alert_id if isinstance(alert_id, str) else None,
            )
        except ValueError:
            log.warning("ignoring feedback of unknown kind %r", kind)
            return False
        if applied:
            self.applied += 1
            log.info("feedback %s applied to %s/%s", kind, entity, metric)
        return applied

    def _config(self) -> api.ConsumerConfig:
        if self._last_seq:
            return api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._last_seq + 1
            )
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=self.since
        )

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Follow feedback until ``stop``; ``ready`` is set once the history is applied."""
        while not stop.is_set():
            try:
                sub, name = await _ephemeral(
                    self._js, stream=AI_STREAM, subject=FEEDBACK_FILTER, config=self._config()
                )
            except Exception as exc:  # noqa: BLE001 - retried; NATS may be reconnecting
                log.warning("cannot follow feedback yet: %s", exc)
                await _sleep_or_stop(stop, 1.0)
                continue
            try:
                await self._follow(sub, stop, ready)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                with contextlib.suppress(Exception):
                    await self._js.delete_consumer(AI_STREAM, name)

    async def _follow(self, sub: Any, stop: asyncio.Event, ready: asyncio.Event | None) -> None:  # noqa: ANN401
        while not stop.is_set():
            try:
                msgs: list[Msg] = await sub.fetch(64, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                if ready is not None:
                    ready.set()
                continue
            except (nats.js.errors.NotFoundError, nats.errors.ConnectionClosedError) as exc:
                log.warning("feedback consumer lost (%s); recreating", exc)
                return
            except Exception as exc:  # noqa: BLE001 - recreate the consumer on any failure
                log.warning("feedback fetch failed (%s); recreating", exc)
                await _sleep_or_stop(stop, 0.5)
                return
            for msg in msgs:
                self._last_seq = msg.metadata.sequence.stream
                with contextlib.suppress(EventError):
                    self.handle(decode_nats(msg.headers or {}, msg.data))
                if ready is not None and msg.metadata.num_pending == 0:
                    ready.set()


async def _sleep_or_stop(stop: asyncio.Event, delay_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stop.wait()
