"""The detector process: replay, durable snapshot consumer, stats poller, feedback, actions, ops.

Start-up order (so a restart does not blind the detector and nothing is learned twice):

1. serve ``/livez`` ``/readyz`` ``/metrics``, connect to NATS (retrying with backoff), start
   the ``system.metrics.anomaly-detector`` reporter (:class:`backbone.service.ServiceRuntime`);
2. note SYSTEM_EVENTS' last sequence ``L``;
3. replay ``system.metrics.>`` from ``now - replay_window_s`` through ``L`` with an ephemeral
   consumer into the models, emitting nothing: the services' snapshots and the
   ``system.metrics.jetstream`` snapshots the stats poller publishes (JetStream stream,
   consumer and event-type series), so neither kind of series starts cold;
4. follow ``ai.feedback.>`` (history of ``feedback_replay_s`` first) and apply it;
5. consume this replica's durable on ``system.metrics.>`` (it resumes from its ack floor;
   messages ``<= L`` are acknowledged unlearned), poll JetStream stats,
   expire automatic actions; ``/readyz`` turns 200.

Replicas: each replica ``i`` of ``n`` (``BACKBONE_ANOMALY__REPLICA_INDEX``/``__REPLICA_COUNT``)
has its own durable (``anomaly-detector-<i>``), reads every snapshot and keeps the entities
with ``crc32(entity) % n == i``. A shared durable would deal one service's snapshots to
random replicas and leave every replica with a broken series; snapshots are small and few, so
reading them all is cheap. A lost replica's share is unwatched until it is restarted (a
StatefulSet does that).

Shutdown (SIGTERM/SIGINT): stop reporting, stop consuming (in-flight snapshot finishes and is
acknowledged), revert automatic actions still in force, drain NATS, stop the ops server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from anomaly_detector.actions import ActionGate
from anomaly_detector.features import owner_of, snapshot_observations
from anomaly_detector.handlers import (
    METRICS_FILTER,
    SYSTEM_STREAM,
    FeedbackFollower,
    FindingSink,
    SnapshotHandler,
    StatsPoller,
    replay,
)
from anomaly_detector.service import DetectorService
from anomaly_detector.settings import SERVICE_NAME, Settings
from backbone.messaging import Consumer
from backbone.service import ServiceApp, ServiceRuntime, load_service_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from backbone.events import CloudEvent
    from backbone.messaging import Publisher
    from backbone.service import ServiceContext

log = logging.getLogger(__name__)

_FEEDBACK_HISTORY_WAIT_S = 5.0
_EXPIRY_TICK_S = 1.0


class AnomalyApp(ServiceApp[Settings]):
    """One detector replica. ``await run()`` until SIGTERM/SIGINT or :meth:`request_stop`.

    Args:
        settings: The process settings.
        install_signal_handlers: Stop on SIGTERM/SIGINT (off in tests that embed the app).
        clock: Wall clock (seconds) for action rate limits/expiry and stats timestamps.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        install_signal_handlers: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            ServiceRuntime(
                SERVICE_NAME,
                settings,
                readiness={"models": self._ready_models},
                handle_signals=install_signal_handlers,
            )
        )
        self.clock = clock
        self.service: DetectorService | None = None
        self.sink: FindingSink | None = None
        self.consumer: Consumer | None = None
        self.poller: StatsPoller | None = None
        self.feedback: FeedbackFollower | None = None
        self.replayed = 0
        self.ready = asyncio.Event()
        self._stop = self.runtime.stopping
        self._tasks: list[asyncio.Task[None]] = []

    def owns(self, entity: str) -> bool:
        """Whether this replica watches ``entity``."""
        cfg = self.settings.anomaly
        return owner_of(entity, cfg.replica_count) == cfg.replica_index

    def _ready_models(self) -> bool:
        return self.ready.is_set()

    async def main(self, ctx: ServiceContext[Settings]) -> None:
        """Rebuild the models, then watch until stopped."""
        ctx.add_cleanup(self._shutdown)
        await self._start(ctx.nc, ctx.publisher)
        for name, gauge in self._gauges().items():
            ctx.add_gauge(name, gauge)
        self.ready.set()
        log.info(
            "anomaly-detector watching (replica %d/%d, %d snapshots replayed)",
            self.settings.anomaly.replica_index,
            self.settings.anomaly.replica_count,
            self.replayed,
        )
        await ctx.stopping.wait()

    def _gauges(self) -> dict[str, Callable[[], float]]:
        service = self.service
        assert service is not None  # noqa: S101 - started before the reporter
        return {
            "anomaly_series_tracked": lambda: float(service.series_count),
            "anomaly_observations": lambda: float(service.observations),
            "anomaly_findings": lambda: float(service.findings),
        }

    async def _start(self, nc: Client, publisher: Publisher) -> None:
        cfg = self.settings.anomaly
        js = nc.jetstream()
        self.service = DetectorService(cfg, instance=self.settings.nats.name or SERVICE_NAME)
        self.sink = FindingSink(
            publish=publisher.publish,
            nc=nc,
            gate=ActionGate(cfg.actions, clock=self.clock),
            settings=cfg.actions,
            metrics=self.metrics,
        )
        through = await self._prepare_durable(js)
        self.replayed = await self._replay(js, through)
        feedback_ready = asyncio.Event()
        self.feedback = FeedbackFollower(
            js,
            self.service,
            owns=self.owns,
            since=datetime.now(UTC) - timedelta(seconds=cfg.feedback_replay_s),
        )
        self._tasks.append(asyncio.create_task(self.feedback.run(self._stop, ready=feedback_ready)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feedback_ready.wait(), _FEEDBACK_HISTORY_WAIT_S)
        handler = SnapshotHandler(
            self.service, self.sink, owns=self.owns, replayed_through_seq=through
        )
        self.consumer = Consumer(
            nc,
            stream=SYSTEM_STREAM,
            durable=cfg.durable_name,
            handler=handler,
            filter_subjects=[METRICS_FILTER],
            concurrency=1,  # one series' points must be learned in order
            max_deliver=3,
            metrics=self.metrics,
        )
        await self.consumer.start()
        if cfg.stats_interval_s > 0:
            self.poller = StatsPoller(
                js,
                self.service,
                self.sink,
                owns=self.owns,
                type_rate_streams=cfg.type_rate_streams,
                max_types=cfg.max_types,
                clock=self.clock,
                publish=publisher.publish if cfg.stats_snapshots else None,
                instance=self.runtime.instance,
            )
            self._tasks.append(
                asyncio.create_task(self.poller.run(self._stop, interval_s=cfg.stats_interval_s))
            )
        self._tasks.append(asyncio.create_task(self._expire_loop()))

    async def _prepare_durable(self, js: JetStreamContext) -> int:
        """SYSTEM_EVENTS' last sequence: the replay covers up to it, the durable what follows.

        The durable itself is created by :class:`~backbone.messaging.Consumer` (deliver-all
        on its first creation); the snapshots up to this sequence that it delivers are
        acknowledged without being learned.
        """
        info = await js.stream_info(SYSTEM_STREAM)
        return info.state.last_seq

    async def _replay(self, js: JetStreamContext, through: int) -> int:
        cfg = self.settings.anomaly
        service = self.service
        assert service is not None  # noqa: S101 - set by _start

        def learn(event: CloudEvent) -> None:
            for obs in snapshot_observations(event):
                if self.owns(obs.entity):
                    service.observe(obs, emit=False)

        if cfg.replay_window_s <= 0:
            return 0
        started = time.perf_counter()
        count = await replay(
            js,
            stream=SYSTEM_STREAM,
            subject=METRICS_FILTER,
            start_time=datetime.fromtimestamp(self.clock() - cfg.replay_window_s, UTC),
            through_seq=through,
            max_messages=cfg.replay_max_messages,
            handle=learn,
        )
        log.info(
            "replayed %d snapshots into %d series in %.2f s",
            count,
            service.series_count,
            time.perf_counter() - started,
        )
        return count

    async def _expire_loop(self) -> None:
        while not self._stop.is_set():
            if self.sink is not None:
                try:
                    await self.sink.expire_due()
                except Exception:
                    log.warning("reverting expired actions failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXPIRY_TICK_S):
                    await self._stop.wait()

    async def _shutdown(self) -> None:
        self.ready.clear()
        if self.consumer is not None:
            await self.consumer.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.sink is not None and self.nc is not None and self.nc.is_connected:
            # An automatic action must not outlive the detector that would have reverted it.
            for action in self.sink.gate.in_force:
                action.expires_at_s = -float("inf")
            with contextlib.suppress(Exception):
                await self.sink.expire_due()


def create_app(
    settings: Settings | None = None,
    *,
    install_signal_handlers: bool = True,
    clock: Callable[[], float] = time.time,
) -> AnomalyApp:
    """Build the detector app; settings default to the environment (``BACKBONE_*``).

    Raises:
        ConfigError: A setting is invalid (names the variable).
    """
    if settings is None:
        settings = load_service_settings(Settings, service_name=SERVICE_NAME)
    return AnomalyApp(settings, install_signal_handlers=install_signal_handlers, clock=clock)
