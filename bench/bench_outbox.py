"""Outbox relay benchmark: throughput vs raw nats-py, commit→stream latency, dead tuples.

All in one run, one Python process, real nats-server and PostgreSQL (the test cluster from
``backbone.testing``: fsync off — PostgreSQL durability is not what is measured):

1. raw: N pre-encoded CloudEvents (dedup ids, same headers as the relay) with
   ``js.publish_async`` and a bounded window — the reference;
2. relay: the same N rows committed to ``backbone_outbox`` first, then one relay moves them
   to the stream; rows/s from relay start to the last commit;
3. latency: one event per transaction at a paced 1k/s for a few seconds while the relay runs;
   commit returned → message received by an ordered push consumer on the stream (so it includes
   the consumer's delivery, a conservative "in the stream" time);
4. housekeeping: sustained enqueue + relay for M rows, then ``n_dead_tup`` and table size.

    uv run python bench/bench_outbox.py [--rows 50000] [--sustained 1000000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nats
import psycopg

from backbone.events import CloudEvent, dedup_id, encode_nats
from backbone.messaging import apply_streams, load_catalog
from backbone.outbox import OutboxRelay, RelayConfig, enqueue, enqueue_many, migrate, outbox_status
from backbone.testing import NatsServer, PostgresServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "outbox.json"
TYPE = "claude.bench.outbox"


def make_event(n: int, key: str, phase: str = "e") -> CloudEvent:
    # Ids are unique per phase: a repeat inside the 2 min duplicate window would be dropped.
    return CloudEvent.create(
        type=TYPE,
        source="/bench/outbox",
        id=f"{phase}-{n}",
        subject=key,
        data={"n": n, "pad": "x" * 64},
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_publish(nc, events: list[CloudEvent], window: int) -> float:
    js = nc.jetstream()
    prepared = []
    for event in events:
        headers, payload = encode_nats(event)
        headers["Nats-Msg-Id"] = dedup_id(event)
        headers["Nats-Expected-Stream"] = "CLAUDE_EVENTS"
        prepared.append((headers, payload))
    started = time.perf_counter()
    pending: set[asyncio.Future] = set()
    for headers, payload in prepared:
        if len(pending) >= window:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                fut.result()
        pending.add(await js.publish_async(TYPE, payload, headers=headers))
    for fut in asyncio.as_completed(pending):
        await fut
    return len(events) / (time.perf_counter() - started)


async def fill(dsn: str, events: list[CloudEvent]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for start in range(0, len(events), 1000):
            chunk = events[start : start + 1000]
            await enqueue_many(conn, chunk)
            await conn.commit()


async def run_relay_until(relays: list[OutboxRelay], target: int, timeout_s: float = 300) -> float:
    started = time.perf_counter()
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    deadline = time.monotonic() + timeout_s
    while sum(relay.stats.published for relay in relays) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"relays published {sum(r.stats.published for r in relays)}/{target}"
            )
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    for relay in relays:
        relay.request_stop()
    await asyncio.gather(*tasks)
    return target / elapsed


async def latency_run(dsn: str, nc, catalog, *, rate: float, seconds: float) -> dict[str, float]:
    js = nc.jetstream()
    committed: dict[str, float] = {}
    received: dict[str, float] = {}

    async def on_msg(msg) -> None:
        received[msg.headers["ce-id"]] = time.perf_counter()

    sub = await js.subscribe(
        TYPE, ordered_consumer=True, cb=on_msg, deliver_policy=nats.js.api.DeliverPolicy.NEW
    )
    relay = OutboxRelay(dsn=dsn, nc=nc, catalog=catalog, config=RelayConfig(poll_interval_s=1.0))
    task = asyncio.create_task(relay.run())
    while len(relay.owned_partitions) < 64:
        await asyncio.sleep(0.01)
    total = int(rate * seconds)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        started = time.perf_counter()
        for n in range(total):
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            event = make_event(n, f"k{n % 50}", "lat")
            await enqueue(conn, event)
            await conn.commit()
            committed[event.id] = time.perf_counter()
        achieved = total / (time.perf_counter() - started)
    deadline = time.monotonic() + 30
    while len(received) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    relay.request_stop()
    await task
    await sub.unsubscribe()
    lat_ms = [(received[i] - committed[i]) * 1000 for i in committed if i in received]
    return {
        "events": total,
        "received": len(lat_ms),
        "achieved_rate_per_s": round(achieved, 1),
        "p50_ms": round(pct(lat_ms, 0.50), 2),
        "p99_ms": round(pct(lat_ms, 0.99), 2),
        "p999_ms": round(pct(lat_ms, 0.999), 2),
        "max_ms": round(max(lat_ms), 2),
        "mean_ms": round(statistics.fmean(lat_ms), 2),
    }


async def sustained_run(
    dsn: str, nc, catalog, *, rows: int, producers: int = 4
) -> dict[str, float]:
    relay = OutboxRelay(dsn=dsn, nc=nc, catalog=catalog, config=RelayConfig())
    task = asyncio.create_task(relay.run())
    samples: list[int] = []
    per_producer = rows // producers

    async def producer(p: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for start in range(0, per_producer, 500):
                batch = [
                    make_event(p * per_producer + start + i, f"k{i % 97}", "sus")
                    for i in range(500)
                ]
                await enqueue_many(conn, batch)
                await conn.commit()

    async def sampler() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while True:
                samples.append((await outbox_status(conn)).dead_tuples)
                await asyncio.sleep(1.0)

    sampling = asyncio.create_task(sampler())
    started = time.perf_counter()
    await asyncio.gather(*(producer(p) for p in range(producers)))
    target = per_producer * producers
    while relay.stats.published < target:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    relay.request_stop()
    await task
    await asyncio.sleep(3.0)  # let autovacuum and the statistics catch up
    sampling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        status = await outbox_status(conn)
        cur = await conn.execute(
            "SELECT pg_total_relation_size('backbone_outbox'), n_live_tup, autovacuum_count, "
            "vacuum_count FROM pg_stat_user_tables WHERE relname = 'backbone_outbox'"
        )
        size, live, autovacuums, vacuums = await cur.fetchone()
    return {
        "rows": target,
        "seconds": round(elapsed, 1),
        "end_to_end_rows_per_s": round(target / elapsed, 1),
        "dead_tuples_max_during_run": max(samples) if samples else 0,
        "dead_tuples_after": status.dead_tuples,
        "live_tuples_after": live,
        "table_total_bytes_after": size,
        "autovacuum_runs": autovacuums + vacuums,
        "backlog_after": status.backlog,
        "relay_vacuums": relay.stats.vacuums,
        "housekeeping_interval_s": relay.config.housekeeping_interval_s,
    }


async def main(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    catalog = load_catalog(ROOT / "deploy" / "streams.yaml")
    with NatsServer(tmp / "nats") as server, PostgresServer(tmp / "pgdata") as pg:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1)
        await apply_streams(nc.jetstream(), catalog)
        n = args.rows
        events = [make_event(i, f"k{i % 97}") for i in range(n)]
        raw_rates, relay_rates = [], []
        for rnd in range(args.rounds):
            raw_rates.append(
                await raw_publish(
                    nc, [make_event(1_000_000 * (rnd + 1) + i, "k") for i in range(n)], 1000
                )
            )
            dsn = pg.create_database()
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                await migrate(conn)
            round_events = (
                [make_event(i, f"k{i % 97}", f"relay{rnd}") for i in range(n)] if rnd else events
            )
            await fill(dsn, round_events)
            relays = [
                OutboxRelay(
                    dsn=dsn,
                    nc=nc,
                    catalog=catalog,
                    config=RelayConfig(batch_size=args.batch, rebalance_interval_s=0.05),
                )
                for _ in range(args.workers)
            ]
            relay_rates.append(await run_relay_until(relays, n))
            print(f"round {rnd + 1}: raw {raw_rates[-1]:,.0f}/s  relay {relay_rates[-1]:,.0f}/s")
        dsn = pg.create_database()
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await migrate(conn)
        latency = await latency_run(dsn, nc, catalog, rate=args.rate, seconds=args.seconds)
        dsn = pg.create_database()
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await migrate(conn)
        sustained = await sustained_run(dsn, nc, catalog, rows=args.sustained)
        await nc.close()
    raw = statistics.median(raw_rates)
    relay_rate = statistics.median(relay_rates)
    return {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "throughput": {
            "rows": n,
            "batch_size": args.batch,
            "rounds": args.rounds,
            "raw_publish_async_per_s": round(raw, 1),
            "relay_rows_per_s": round(relay_rate, 1),
            "ratio_relay_to_raw": round(relay_rate / raw, 3),
            "goal_ratio": 0.7,
        },
        "latency_commit_to_stream": {**latency, "target_rate_per_s": args.rate, "goal_p99_ms": 20},
        "housekeeping": sustained,
    }


def table(result: dict) -> str:
    t, lat, hk = result["throughput"], result["latency_commit_to_stream"], result["housekeeping"]
    raw, rel = t["raw_publish_async_per_s"], t["relay_rows_per_s"]
    dead_max, dead_after = hk["dead_tuples_max_during_run"], hk["dead_tuples_after"]
    lines = [
        "| measure | value | reference / goal |",
        "|---|---|---|",
        f"| raw nats-py publish_async (same run) | {raw:,.0f} /s | reference |",
        (
            f"| relay: committed backlog to acked ({t['rows']:,} rows) | {rel:,.0f} /s "
            f"| {t['ratio_relay_to_raw']:.2f}x raw (goal >= 0.7x) |"
        ),
        f"| commit to stream p50 @ {lat['achieved_rate_per_s']:,.0f}/s | {lat['p50_ms']} ms | |",
        f"| commit to stream p99 | {lat['p99_ms']} ms | goal < 20 ms |",
        f"| commit to stream p99.9 / max | {lat['p999_ms']} / {lat['max_ms']} ms | |",
        (
            f"| sustained {hk['rows']:,} rows (enqueue + relay) "
            f"| {hk['end_to_end_rows_per_s']:,.0f} /s | |"
        ),
        f"| dead tuples: max during run / after | {dead_max:,} / {dead_after:,} | |",
        f"| outbox table size after | {hk['table_total_bytes_after'] / 1024:,.0f} KiB | |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sustained", type=int, default=1_000_000)
    result = asyncio.run(main(parser.parse_args()))
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
