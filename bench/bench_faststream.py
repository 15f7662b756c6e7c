"""backbone.messaging (nats-py based) against FastStream's NATS broker, measured in the same run.

Why this exists: the project brief names ``faststream[nats]`` as the messaging dependency; the
services use ``backbone.messaging`` on nats-py instead. This script is the measured reason.

One nats-server -js (temp store), streams from deploy/streams.yaml. Scenarios:

consume  N binary-mode CloudEvents pre-published once to MCP_EVENTS; each run creates a fresh
         durable pull consumer (deliver all, explicit ack, same max_ack_pending), on its own new
         connection, and times "start -> every message handled and acknowledged":
         - raw nats-py fetch loop, ack each (the ceiling);
         - raw loop + ``decode_nats`` (what decoding a CloudEvent alone costs);
         - ``backbone.messaging.Consumer`` with a no-op handler (it always decodes the CloudEvent);
         - FastStream ``PullSub`` subscriber, no-op handler taking the ``NatsMessage`` (no decode);
         - the same with a CloudEvent decoder, the handler taking the ``CloudEvent`` (same work as
           ``Consumer``).
         Rounds are interleaved (the order rotates every round); medians and ratios to the raw
         ceiling are reported.
publish  sequential, each awaiting its PubAck: raw ``js.publish``, ``Publisher.publish``,
         FastStream ``broker.publish(..., stream=...)``; pipelined: raw ``publish_async``,
         ``Publisher.publish_many``, and for FastStream (which has no pipelined JetStream publish:
         ``publish_batch`` raises FeatureNotSupportedException) a user-side ``asyncio.gather``
         over windows of ``broker.publish`` calls.
features not timed: what FastStream needs to do what ``Consumer``/``Publisher`` do (dead letter
         with error headers after max_deliver, nak with a per-attempt delay, dedup
         ``Nats-Msg-Id``, binary and structured CloudEvents). Each snippet below runs against the
         same server and its outcome is recorded.

Writes ``bench/results/faststream.json``. Run: ``uv run python bench/bench_faststream.py``
(``--quick`` for a smoke run, ``--sweep`` to re-tune batch/concurrency of both libraries).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import statistics
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import nats
from faststream.exceptions import NackMessage
from faststream.middlewares import AckPolicy, BaseMiddleware
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage  # noqa: TC002 - fast_depends reads it at runtime
from nats.js import api

from backbone.events import CloudEvent, decode_nats, dedup_id, encode_nats
from backbone.messaging import Consumer, Publisher, apply_streams, dlq_subject, load_catalog
from backbone.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "faststream.json"
STREAMS = ROOT / "deploy" / "streams.yaml"
STREAM = "MCP_EVENTS"
SUBJECT = "mcp.server.error"
DATA = {"error": "Connection timeout", "severity": 0.8, "server": "filesystem"}
MAX_ACK_PENDING = 1024  # what Consumer computes for batch 256 / concurrency <= 256


def make_events(n: int, tag: str, subject: str = SUBJECT) -> list[CloudEvent]:
    return [
        CloudEvent.create(type=subject, source=f"/bench/{tag}", id=f"{tag}-{i}", data=DATA)
        for i in range(n)
    ]


def consumer_config(durable: str) -> api.ConsumerConfig:
    # The same durable for every contender: what Consumer.start() creates.
    return api.ConsumerConfig(
        durable_name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,
        max_ack_pending=MAX_ACK_PENDING,
        deliver_policy=api.DeliverPolicy.ALL,
        filter_subject=SUBJECT,
    )


class Counter:
    """Counts handled messages and fires when all are in."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.total:
            self.done.set()


async def wait_acked(js: Any, durable: str, counter: Counter, timeout_s: float = 120.0) -> None:
    """Wait for every handler, then until the server holds no unacknowledged message."""
    await asyncio.wait_for(counter.done.wait(), timeout=timeout_s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = await js.consumer_info(STREAM, durable)
        if not info.num_pending and not info.num_ack_pending:
            return
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{durable}: acks still pending")


# ---------------------------------------------------------------------------------------------
# consume contenders: each returns elapsed seconds for `n` messages
# ---------------------------------------------------------------------------------------------


async def consume_raw(
    url: str, admin_js: Any, n: int, knobs: dict[str, Any], *, decode: bool
) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    durable = f"raw{uuid.uuid4().hex[:8]}"
    counter = Counter(n)
    batch = knobs["batch"]
    start = time.perf_counter()
    await js.add_consumer(STREAM, config=consumer_config(durable))
    sub = await js.pull_subscribe_bind(durable=durable, stream=STREAM)

    async def loop() -> None:
        while not counter.done.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                if decode:
                    decode_nats(msg.headers, msg.data)
                await msg.ack()
                counter.hit()

    task = asyncio.create_task(loop())
    await wait_acked(admin_js, durable, counter)
    elapsed = time.perf_counter() - start
    await task
    await nc.close()
    await admin_js.delete_consumer(STREAM, durable)
    return elapsed


async def consume_backbone(url: str, admin_js: Any, n: int, knobs: dict[str, Any]) -> float:
    nc = await nats.connect(url)
    durable = f"bb{uuid.uuid4().hex[:8]}"
    counter = Counter(n)

    async def handler(event: CloudEvent, delivery: Any) -> None:
        counter.hit()

    consumer = Consumer(
        nc,
        stream=STREAM,
        durable=durable,
        handler=handler,
        filter_subjects=[SUBJECT],
        batch=knobs["batch"],
        concurrency=knobs["concurrency"],
        max_deliver=5,
    )
    start = time.perf_counter()
    await consumer.start()
    await wait_acked(admin_js, durable, counter)
    elapsed = time.perf_counter() - start
    await consumer.stop()
    await nc.close()
    await admin_js.delete_consumer(STREAM, durable)
    return elapsed


async def decode_cloudevent(msg: Any) -> CloudEvent:
    """FastStream decoder: the broker's message (headers + body) to a CloudEvent."""
    return decode_nats(msg.headers, msg.body)


async def consume_faststream(
    url: str, admin_js: Any, n: int, knobs: dict[str, Any], *, style: str
) -> float:
    durable = f"fs{uuid.uuid4().hex[:8]}"
    counter = Counter(n)
    # logger=None: FastStream logs every message at INFO by default; Consumer logs nothing per
    # successful message, so both run without per-message logging.
    broker = NatsBroker(url, logger=None, graceful_timeout=5.0)
    options: dict[str, Any] = {
        "stream": JStream(STREAM, declare=False),  # streams come from deploy/streams.yaml
        "durable": durable,
        "config": consumer_config(durable),
        "pull_sub": PullSub(batch_size=knobs["batch"], timeout=1.0),
        "ack_policy": AckPolicy.NACK_ON_ERROR,  # ack after success, nak on error
    }
    if knobs.get("max_workers", 1) > 1:
        options["max_workers"] = knobs["max_workers"]
    if style == "ce":

        @broker.subscriber(SUBJECT, decoder=decode_cloudevent, **options)  # type: ignore[untyped-decorator]
        async def handle_event(event: CloudEvent) -> None:
            counter.hit()

    elif style == "msg":
        # The documented way to reach the message (num_delivered, headers): a Context
        # dependency, which fast_depends resolves in a worker thread for every message.
        @broker.subscriber(SUBJECT, **options)  # type: ignore[untyped-decorator]
        async def handle_msg(msg: NatsMessage) -> None:
            counter.hit()

    else:
        # No parameters: nothing decoded, nothing injected - FastStream's leanest path.
        @broker.subscriber(SUBJECT, **options)  # type: ignore[untyped-decorator]
        async def handle_nothing() -> None:
            counter.hit()

    await broker.connect()  # the other contenders connect before the clock starts too
    start = time.perf_counter()
    await broker.start()
    await wait_acked(admin_js, durable, counter)
    elapsed = time.perf_counter() - start
    await broker.stop()
    await admin_js.delete_consumer(STREAM, durable)
    return elapsed


CONTENDERS = ("raw", "raw_decode", "backbone", "faststream", "faststream_ce", "faststream_msg")


async def run_consume(url: str, admin_js: Any, name: str, n: int, knobs: dict[str, Any]) -> float:
    if name == "raw":
        return await consume_raw(url, admin_js, n, knobs["raw"], decode=False)
    if name == "raw_decode":
        return await consume_raw(url, admin_js, n, knobs["raw"], decode=True)
    if name == "backbone":
        return await consume_backbone(url, admin_js, n, knobs["backbone"])
    style = {"faststream": "none", "faststream_ce": "ce", "faststream_msg": "msg"}[name]
    return await consume_faststream(url, admin_js, n, knobs["faststream"], style=style)


# ---------------------------------------------------------------------------------------------
# publish contenders: each returns events/s
# ---------------------------------------------------------------------------------------------


def encoded(n: int, tag: str) -> list[tuple[dict[str, str], bytes]]:
    out = []
    for event in make_events(n, tag):
        headers, payload = encode_nats(event)
        headers["Nats-Msg-Id"] = dedup_id(event)
        out.append((headers, payload))
    return out


async def pub_raw_awaited(js: Any, n: int) -> float:
    # The ceiling: messages encoded before the clock starts, only the transport is timed.
    messages = encoded(n, f"ra{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    for headers, payload in messages:
        await js.publish(SUBJECT, payload, headers=headers, stream=STREAM)
    return n / (time.perf_counter() - start)


async def pub_backbone(publisher: Publisher, n: int) -> float:
    events = make_events(n, f"bb{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    for event in events:
        await publisher.publish(event)
    return n / (time.perf_counter() - start)


def faststream_headers(headers: dict[str, str]) -> dict[str, str]:
    # FastStream always adds a lower-case ``content-type`` (application/octet-stream for bytes)
    # and a ``correlation_id``; NATS header names are case-sensitive, so our ``Content-Type``
    # would travel twice and decode_nats refuses the duplicate. Lower-casing it overrides theirs.
    fixed = dict(headers)
    if "Content-Type" in fixed:
        fixed["content-type"] = fixed.pop("Content-Type")
    return fixed


def faststream_message(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    # What a FastStream user writes: FastStream has no CloudEvents support, so the event is
    # encoded by our binding and the dedup id set by hand; FastStream carries bytes + headers.
    headers, payload = encode_nats(event)
    headers = faststream_headers(headers)
    headers["Nats-Msg-Id"] = dedup_id(event)
    return headers, payload


async def pub_faststream(broker: NatsBroker, n: int) -> float:
    events = make_events(n, f"fs{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    for event in events:
        headers, payload = faststream_message(event)
        await broker.publish(payload, SUBJECT, headers=headers, stream=STREAM, timeout=5.0)
    return n / (time.perf_counter() - start)


async def pub_raw_async(js: Any, n: int) -> float:
    # The ceiling, as above: pre-encoded.
    messages = encoded(n, f"rp{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    futures = [
        await js.publish_async(SUBJECT, payload, headers=headers) for headers, payload in messages
    ]
    await asyncio.gather(*futures)
    return n / (time.perf_counter() - start)


async def pub_backbone_many(publisher: Publisher, n: int) -> float:
    events = make_events(n, f"bm{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    results = await publisher.publish_many(events, window=4000)
    elapsed = time.perf_counter() - start
    if any(isinstance(r, Exception) for r in results):
        raise RuntimeError("publish_many failed")
    return n / elapsed


async def pub_faststream_gather(broker: NatsBroker, n: int, window: int) -> float:
    events = make_events(n, f"fg{uuid.uuid4().hex[:6]}")

    async def one(event: CloudEvent) -> Any:
        headers, payload = faststream_message(event)
        return await broker.publish(payload, SUBJECT, headers=headers, stream=STREAM, timeout=5.0)

    start = time.perf_counter()
    for i in range(0, n, window):
        await asyncio.gather(*(one(event) for event in events[i : i + window]))
    return n / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# feature check: what Consumer/Publisher do, written with FastStream
# ---------------------------------------------------------------------------------------------

FS_MAX_DELIVER = 3
FS_BACKOFF_S = (0.05, 0.1)


class DeadLetterMiddleware(BaseMiddleware):
    """FastStream middleware: nak with a per-attempt delay, dead-letter after max_deliver.

    Sees handler *and* decoder errors (the decoder runs lazily inside the handler call), so a
    poison message is dead-lettered too. Publishes through the broker's nats-py JetStream context
    rather than ``broker.publish`` to keep the original headers intact (see faststream_headers).
    """

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,  # noqa: ARG002 - FastStream's signature
        exc_val: BaseException | None = None,
        exc_tb: Any = None,  # noqa: ARG002
    ) -> bool | None:
        if exc_val is None or not isinstance(exc_val, Exception):
            return False
        msg = self.msg  # the raw nats-py Msg
        if msg is None or msg._ackd:  # noqa: SLF001 - already settled (e.g. NackMessage raised by the handler)
            return False
        meta = msg.metadata
        delivered = meta.num_delivered
        if delivered < FS_MAX_DELIVER:
            await msg.nak(delay=FS_BACKOFF_S[min(delivered, len(FS_BACKOFF_S)) - 1])
            return True
        headers = {
            k: v
            for k, v in (msg.headers or {}).items()
            if k not in {"Nats-Msg-Id", "Nats-Expected-Stream"}
        }
        headers |= {
            "Backbone-Original-Subject": msg.subject,
            "Backbone-Original-Stream": meta.stream,
            "Backbone-Original-Sequence": str(meta.sequence.stream),
            "Backbone-Delivery-Count": str(delivered),
            "Backbone-Error-Type": type(exc_val).__name__,
            "Backbone-Error-Message": " ".join(str(exc_val).split())[:1024],
            "Nats-Msg-Id": f"dlq:{meta.stream}:{meta.sequence.stream}",
        }
        js = self.context.get("broker").config.connection_state.stream
        try:
            await js.publish(dlq_subject(msg.subject), msg.data, headers=headers)
        except Exception:  # noqa: BLE001 - DLQ unavailable: keep the message, retry later
            await msg.nak(delay=FS_BACKOFF_S[-1])
            return True
        await msg.term()
        return True


async def feature_dead_letter(url: str, admin_js: Any) -> dict[str, Any]:
    """Handler always fails: expect FS_MAX_DELIVER attempts spaced by the backoff, then a dead
    letter on dlq.<subject> with the error headers and a decodable event."""
    subject = "mcp.bench.failing"
    durable = f"fsdlq{uuid.uuid4().hex[:6]}"
    attempts: list[float] = []
    broker = NatsBroker(url, logger=None, middlewares=[DeadLetterMiddleware])

    @broker.subscriber(
        subject,
        stream=JStream(STREAM, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=16, timeout=0.2),
        decoder=decode_cloudevent,
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def handle(event: CloudEvent) -> None:
        attempts.append(time.monotonic())
        raise ValueError(f"cannot handle {event.id}\nsecond line")

    event = make_events(1, f"dlq{uuid.uuid4().hex[:6]}", subject)[0]
    headers, payload = encode_nats(event)
    ack = await admin_js.publish(subject, payload, headers=headers)
    dlq_before = (await admin_js.stream_info("DLQ")).state.last_seq
    await broker.start()
    deadline = time.monotonic() + 10
    letter = None
    while time.monotonic() < deadline and letter is None:
        info = await admin_js.stream_info("DLQ")
        if info.state.last_seq > dlq_before:
            letter = await admin_js.get_msg("DLQ", seq=info.state.last_seq)
        else:
            await asyncio.sleep(0.02)
    await broker.stop()
    with contextlib.suppress(Exception):
        await admin_js.delete_consumer(STREAM, durable)
    if letter is None:
        return {"ok": False, "attempts": len(attempts)}
    lh = letter.headers or {}
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    ok = (
        len(attempts) == FS_MAX_DELIVER
        and letter.subject == dlq_subject(subject)
        and lh.get("Backbone-Original-Sequence") == str(ack.seq)
        and lh.get("Backbone-Error-Type") == "ValueError"
        and decode_nats(lh, letter.data) == event
        and all(g >= d * 0.9 for g, d in zip(gaps, FS_BACKOFF_S, strict=False))
    )
    return {"ok": ok, "attempts": len(attempts), "gaps_s": gaps, "dlq_headers": sorted(lh)}


async def feature_nak_delay_in_handler(url: str, admin_js: Any) -> dict[str, Any]:
    """Per-attempt delay from the handler itself: ``raise NackMessage(delay=...)``."""
    subject = "mcp.bench.nak"
    durable = f"fsnak{uuid.uuid4().hex[:6]}"
    attempts: list[float] = []
    done = asyncio.Event()
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(
        subject,
        stream=JStream(STREAM, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=16, timeout=0.2),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def handle(msg: NatsMessage) -> None:
        attempts.append(time.monotonic())
        n = msg.raw_message.metadata.num_delivered
        if n < 3:
            raise NackMessage(delay=0.1 * n)
        done.set()

    await admin_js.publish(subject, b"{}")
    await broker.start()
    await asyncio.wait_for(done.wait(), timeout=10)
    await broker.stop()
    await admin_js.delete_consumer(STREAM, durable)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    return {"ok": gaps[0] >= 0.09 and gaps[1] >= 0.18, "gaps_s": gaps}


async def feature_dedup(url: str, admin_js: Any) -> dict[str, Any]:
    """Dedup id from the CloudEvent: FastStream passes user headers through, so Nats-Msg-Id works."""
    broker = NatsBroker(url, logger=None)
    await broker.connect()
    event = make_events(1, f"dd{uuid.uuid4().hex[:6]}")[0]
    headers, payload = faststream_message(event)
    first = await broker.publish(payload, SUBJECT, headers=headers, stream=STREAM)
    second = await broker.publish(payload, SUBJECT, headers=headers, stream=STREAM)
    stored = await admin_js.get_msg(STREAM, seq=first.seq)
    # Without the lower-casing workaround the stored message carries Content-Type twice.
    event2 = make_events(1, f"dd{uuid.uuid4().hex[:6]}")[0]
    raw_headers, payload2 = encode_nats(event2)
    naive = await broker.publish(payload2, SUBJECT, headers=raw_headers, stream=STREAM)
    naive_stored = await admin_js.get_msg(STREAM, seq=naive.seq)
    try:
        decode_nats(naive_stored.headers, naive_stored.data)
        naive_decodes = True
    except Exception:  # noqa: BLE001 - recording the outcome
        naive_decodes = False
    await broker.stop()
    return {
        "ok": bool(second.duplicate) and second.seq == first.seq,
        "second_publish_duplicate": bool(second.duplicate),
        "decodes_with_workaround": decode_nats(stored.headers, stored.data) == event,
        "extra_headers_added": sorted(
            k for k in (stored.headers or {}) if k not in headers and k != "Nats-Expected-Stream"
        ),
        "naive_headers_decode": naive_decodes,
    }


async def feature_cloudevents(url: str, admin_js: Any) -> dict[str, Any]:
    """Binary and structured CloudEvents through one FastStream decoder (ours: decode_nats)."""
    subject = "mcp.bench.modes"
    durable = f"fsce{uuid.uuid4().hex[:6]}"
    got: list[CloudEvent] = []
    done = asyncio.Event()
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(
        subject,
        stream=JStream(STREAM, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=16, timeout=0.2),
        decoder=decode_cloudevent,
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def handle(event: CloudEvent) -> None:
        got.append(event)
        if len(got) == 2:
            done.set()

    sent = make_events(2, f"ce{uuid.uuid4().hex[:6]}", subject)
    modes: tuple[Literal["binary", "structured"], ...] = ("binary", "structured")
    for event, mode in zip(sent, modes, strict=True):
        headers, payload = encode_nats(event, mode=mode)
        await admin_js.publish(subject, payload, headers=headers)
    await broker.start()
    await asyncio.wait_for(done.wait(), timeout=10)
    await broker.stop()
    await admin_js.delete_consumer(STREAM, durable)
    return {"ok": sorted(e.id for e in got) == sorted(e.id for e in sent)}


def loc(*objs: Any) -> int:
    """Non-blank, non-comment source lines (docstrings included) of the given snippets."""
    lines = []
    for obj in objs:
        lines += [
            line
            for line in inspect.getsource(obj).splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    return len(lines)


async def feature_check(url: str, admin_js: Any) -> dict[str, Any]:
    return {
        "dead_letter_after_max_deliver_with_error_headers": {
            **await feature_dead_letter(url, admin_js),
            "how": "custom BaseMiddleware (after_processed): nak(delay) or publish dlq.<subject> + term",
            "code_lines": loc(DeadLetterMiddleware),
        },
        "nak_with_per_attempt_delay": {
            **await feature_nak_delay_in_handler(url, admin_js),
            "how": "built in: raise NackMessage(delay=...) or msg.nack(delay=...); the attempt "
            "number comes from msg.raw_message.metadata (nats-py)",
            "code_lines": 3,
        },
        "dedup_nats_msg_id": {
            **await feature_dedup(url, admin_js),
            "how": "headers={'Nats-Msg-Id': dedup_id(event)} on broker.publish; the CloudEvent "
            "encoding is ours (encode_nats) and Content-Type must be lower-cased",
            "code_lines": loc(faststream_headers, faststream_message),
        },
        "cloudevents_binary_and_structured": {
            **await feature_cloudevents(url, admin_js),
            "how": "custom decoder wrapping backbone.events.decode_nats; FastStream has no "
            "CloudEvents support of its own",
            "code_lines": loc(decode_cloudevent),
        },
        "pipelined_publish": {
            "ok": False,
            "how": "none: NatsBroker.publish_batch raises FeatureNotSupportedException; "
            "asyncio.gather over broker.publish is the user-side substitute (timed above)",
        },
        "not_covered_by_faststream": [
            "idempotency store (processed-id check before the handler): a middleware more",
            (
                "DLQ publish must bypass broker.publish: it adds content-type/correlation_id "
                "headers, duplicating our Content-Type"
            ),
            (
                "streams come from deploy/streams.yaml: JStream(declare=False) is needed, or "
                "FastStream declares streams with its own defaults on start"
            ),
            (
                "consumer settings: FastStream creates the durable from ConsumerConfig as "
                "given; binding to an existing durable with other settings is nats-py's doing"
            ),
        ],
    }


# ---------------------------------------------------------------------------------------------


async def prepublish(js: Any, n: int) -> None:
    window = 2000
    messages = encoded(n, f"pre{uuid.uuid4().hex[:6]}")
    for i in range(0, n, window):
        futures = [
            await js.publish_async(SUBJECT, payload, headers=headers)
            for headers, payload in messages[i : i + window]
        ]
        await asyncio.gather(*futures)


SWEEP = {
    "backbone": [
        {"batch": b, "concurrency": c}
        for b, c in ((64, 64), (128, 128), (256, 256), (64, 256), (128, 256))
    ],
    "faststream": [{"batch": b, "max_workers": w} for b in (64, 128, 256) for w in (1, 64)],
}
# Chosen from `--sweep` on the 2-core dev box (best median of each library; see results JSON).
TUNED = {
    "raw": {"batch": 256},
    "backbone": {"batch": 64, "concurrency": 256},
    "faststream": {"batch": 64, "max_workers": 1},
}


async def sweep(url: str, admin_js: Any, n: int) -> dict[str, Any]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name, grid in SWEEP.items():
        out[name] = []
        for knobs in grid:
            runs = [await run_consume(url, admin_js, name, n, {name: knobs}) for _ in range(2)]
            rate = n / statistics.median(runs)
            out[name].append({**knobs, "events_per_s": round(rate)})
            print(f"  sweep {name:<11} {knobs}  {rate:>9,.0f}/s")
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        admin = await nats.connect(server.url)
        js = admin.jetstream(timeout=10)
        catalog = load_catalog(STREAMS)
        await apply_streams(js, catalog)
        info = await js.stream_info(STREAM)
        info.config.max_msgs = -1  # the seed limit (50k) would evict during the publish rounds
        await js.update_stream(info.config)

        await prepublish(js, args.n)
        sweep_result = await sweep(server.url, js, args.n) if args.sweep else None

        rounds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for r in range(args.rounds):
            order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
            for name in order:
                elapsed = await run_consume(server.url, js, name, args.n, TUNED)
                rounds[name].append(args.n / elapsed)
        consume = {name: statistics.median(v) for name, v in rounds.items()}

        publisher = Publisher(admin, catalog=catalog)
        broker = NatsBroker(server.url, logger=None)
        await broker.connect()
        pub_rounds: dict[str, list[float]] = {
            "raw_js_publish": [],
            "backbone_publish": [],
            "faststream_publish": [],
            "raw_publish_async": [],
            "backbone_publish_many": [],
            "faststream_gather": [],
        }
        sequential = {
            "raw_js_publish": lambda: pub_raw_awaited(js, args.n_sync),
            "backbone_publish": lambda: pub_backbone(publisher, args.n_sync),
            "faststream_publish": lambda: pub_faststream(broker, args.n_sync),
        }
        pipelined = {
            "raw_publish_async": lambda: pub_raw_async(js, args.n_pipe),
            "backbone_publish_many": lambda: pub_backbone_many(publisher, args.n_pipe),
            "faststream_gather": lambda: pub_faststream_gather(broker, args.n_pipe, args.window),
        }
        await pub_raw_awaited(js, 200)  # warm the connection and the stream's file
        for r in range(args.rounds):
            for group in (sequential, pipelined):
                names = list(group)
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    pub_rounds[name].append(await group[name]())
            await js.purge_stream(STREAM, subject=SUBJECT)
        await broker.stop()
        publish = {name: statistics.median(v) for name, v in pub_rounds.items()}

        features = await feature_check(server.url, js)
        await admin.close()

    return {
        "versions": {"faststream": version("faststream"), "nats-py": version("nats-py")},
        "setup": {
            "n_consume": args.n,
            "n_publish_sequential": args.n_sync,
            "n_publish_pipelined": args.n_pipe,
            "faststream_gather_window": args.window,
            "rounds": args.rounds,
            "knobs": TUNED,
            "max_ack_pending": MAX_ACK_PENDING,
            "note": "one process, one nats-server; each consume run uses a fresh connection and "
            "a fresh durable reading the same N messages; time = start until all handled and "
            "the server reports no ack pending",
        },
        "consume_events_per_s": consume,
        "consume_rounds": rounds,
        "consume_ratio_to_raw": {k: v / consume["raw"] for k, v in consume.items()},
        "faststream_ce_vs_backbone": consume["faststream_ce"] / consume["backbone"],
        # Same-round pairs cancel the machine's drift between rounds.
        "faststream_ce_vs_backbone_paired_median": statistics.median(
            f / b for f, b in zip(rounds["faststream_ce"], rounds["backbone"], strict=True)
        ),
        "publish_events_per_s": publish,
        "publish_rounds": pub_rounds,
        "publish_ratios": {
            "backbone_publish_vs_raw": publish["backbone_publish"] / publish["raw_js_publish"],
            "faststream_publish_vs_raw": publish["faststream_publish"] / publish["raw_js_publish"],
            "backbone_many_vs_raw_async": publish["backbone_publish_many"]
            / publish["raw_publish_async"],
            "faststream_gather_vs_raw_async": publish["faststream_gather"]
            / publish["raw_publish_async"],
        },
        "features": features,
        "sweep": sweep_result,
    }


LABELS = {
    "raw": "raw nats-py fetch loop (ceiling)",
    "raw_decode": "raw loop + decode_nats",
    "backbone": "backbone.messaging.Consumer",
    "faststream": "FastStream PullSub, no-arg handler",
    "faststream_ce": "FastStream PullSub + CE decoder",
    "faststream_msg": "FastStream PullSub, msg: NatsMessage",
}


def report(result: dict[str, Any]) -> None:
    c, cr = result["consume_events_per_s"], result["consume_ratio_to_raw"]
    s = result["setup"]
    print(f"\nconsume {s['n_consume']:,} binary CloudEvents (median of {s['rounds']} rounds)")
    print(f"  {'contender':<36}{'events/s':>10}  vs raw")
    for name in CONTENDERS:
        print(f"  {LABELS[name]:<36}{c[name]:>10,.0f}  {cr[name]:.2f}x")
    print(
        f"  FastStream+CE / Consumer: {result['faststream_ce_vs_backbone']:.2f}x of medians, "
        f"{result['faststream_ce_vs_backbone_paired_median']:.2f}x median of same-round pairs"
    )
    p, pr = result["publish_events_per_s"], result["publish_ratios"]
    print(f"\npublish (sequential n={s['n_publish_sequential']:,}, awaited PubAck each)")
    print(f"  raw js.publish                      {p['raw_js_publish']:>10,.0f}  1.00x")
    print(
        f"  Publisher.publish                   {p['backbone_publish']:>10,.0f}  {pr['backbone_publish_vs_raw']:.2f}x"
    )
    print(
        f"  FastStream broker.publish(stream=)  {p['faststream_publish']:>10,.0f}  {pr['faststream_publish_vs_raw']:.2f}x"
    )
    print(f"publish (pipelined n={s['n_publish_pipelined']:,})")
    print(f"  raw js.publish_async                {p['raw_publish_async']:>10,.0f}  1.00x")
    print(
        f"  Publisher.publish_many              {p['backbone_publish_many']:>10,.0f}  {pr['backbone_many_vs_raw_async']:.2f}x"
    )
    print(
        f"  FastStream gather(window={s['faststream_gather_window']})       {p['faststream_gather']:>10,.0f}  {pr['faststream_gather_vs_raw_async']:.2f}x"
    )
    print("\nfeature check (FastStream)")
    for name, row in result["features"].items():
        if isinstance(row, dict):
            lines = f"{row['code_lines']} lines" if "code_lines" in row else ""
            print(f"  {name:<50} ok={row['ok']!s:<5} {lines}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="events per consume run")
    parser.add_argument("--n-sync", type=int, default=2_000, help="events per sequential round")
    parser.add_argument("--n-pipe", type=int, default=10_000, help="events per pipelined round")
    parser.add_argument("--window", type=int, default=512, help="FastStream gather window")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="re-tune batch/concurrency first")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.n_sync, args.n_pipe, args.rounds = 3_000, 300, 2_000, 1
    result = asyncio.run(main(args))
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2))
    report(result)
    if not args.quick:
        print(f"\nwritten {RESULTS.relative_to(ROOT)}")
