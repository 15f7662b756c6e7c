"""Publisher throughput and publish→consume latency against raw nats-py, in the same run.

Scenarios (one fresh nats-server -js, file storage, default sync):
- raw nats-py ``publish_async`` with ``Nats-Msg-Id`` (the reference) vs ``Publisher.publish_many``;
- raw awaited ``js.publish`` vs ``Publisher.publish`` (one at a time);
- publish→consume latency through ``Publisher`` and the ``Consumer`` helper, paced at 1k/s and 5k/s.

Writes ``bench/results/publish.json``. Goals (issue 2): publish_many ≥ 0.8× raw; p99 < 5 ms at 5k/s.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import nats

from backbone.events import CloudEvent, encode_nats
from backbone.messaging import Consumer, Publisher, apply_streams, load_catalog
from backbone.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "publish.json"
DATA = {"error": "Connection timeout", "severity": 0.8, "server": "filesystem"}


def make_events(n: int, tag: str) -> list[CloudEvent]:
    return [
        CloudEvent.create(
            type="mcp.server.error", source=f"/bench/{tag}", id=f"{tag}-{i}", data=DATA
        )
        for i in range(n)
    ]


async def purge(js) -> None:
    await js.purge_stream("MCP_EVENTS")


async def raw_async(nc, n: int) -> float:
    js = nc.jetstream()
    # Same message a Publisher sends (binary-mode CloudEvent) so only the library's work differs.
    messages = [encode_nats(e) for e in make_events(n, f"raw{uuid.uuid4().hex[:6]}")]
    start = time.perf_counter()
    futures = []
    for i, (headers, payload) in enumerate(messages):
        headers["Nats-Msg-Id"] = f"raw-{i}-{start}"
        futures.append(await js.publish_async("mcp.server.error", payload, headers=headers))
    await asyncio.gather(*futures)
    return n / (time.perf_counter() - start)


async def ours_many(publisher: Publisher, n: int) -> float:
    events = make_events(n, f"many{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    results = await publisher.publish_many(events, window=4000)
    elapsed = time.perf_counter() - start
    assert not [r for r in results if isinstance(r, Exception)]
    return n / elapsed


async def raw_sync(nc, n: int) -> float:
    js = nc.jetstream()
    messages = [encode_nats(e) for e in make_events(n, f"rs{uuid.uuid4().hex[:6]}")]
    start = time.perf_counter()
    for i, (headers, payload) in enumerate(messages):
        headers["Nats-Msg-Id"] = f"rs-{i}-{start}"
        await js.publish("mcp.server.error", payload, headers=headers)
    return n / (time.perf_counter() - start)


async def ours_sync(publisher: Publisher, n: int) -> float:
    events = make_events(n, f"seq{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    for event in events:
        await publisher.publish(event)
    return n / (time.perf_counter() - start)


async def latency(nc, publisher: Publisher, rate: int, seconds: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    lat_ms: list[float] = []
    done = asyncio.Event()
    total = int(rate * seconds)

    async def handler(event, delivery):
        lat_ms.append((time.perf_counter() - sent[event.id]) * 1000)
        if len(lat_ms) >= total:
            done.set()

    durable = f"lat{rate}{uuid.uuid4().hex[:4]}"
    consumer = Consumer(
        nc,
        stream="MCP_EVENTS",
        durable=durable,
        handler=handler,
        filter_subjects=["mcp.server.error"],
        fetch_timeout_s=0.05,
        batch=256,
        concurrency=256,
    )
    await purge(nc.jetstream())
    await consumer.start()
    await asyncio.sleep(0.3)
    events = make_events(total, durable)
    start = time.perf_counter()
    for i, event in enumerate(events):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[event.id] = time.perf_counter()
        asyncio.create_task(publisher.publish(event))  # noqa: RUF006 - paced fire, awaited via done
    await asyncio.wait_for(done.wait(), timeout=seconds + 30)
    await consumer.stop()
    await nc.jetstream().delete_consumer("MCP_EVENTS", durable)
    lat_ms.sort()

    def pct(p: float) -> float:
        return lat_ms[min(len(lat_ms) - 1, int(p * len(lat_ms)))]

    return {
        "rate": rate,
        "n": len(lat_ms),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": lat_ms[-1],
    }


async def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await apply_streams(js, load_catalog(ROOT / "deploy" / "streams.yaml"))
        # Room for the run: the seed limit of MCP_EVENTS (50k) would evict during the bench.
        info = await js.stream_info("MCP_EVENTS")
        info.config.max_msgs = -1
        await js.update_stream(info.config)
        publisher = Publisher(nc, catalog=load_catalog(ROOT / "deploy" / "streams.yaml"))
        rows = {
            "raw_publish_async": [],
            "publish_many": [],
            "raw_publish_awaited": [],
            "publish": [],
        }
        for _ in range(args.rounds):  # interleaved rounds: noise hits both sides alike
            rows["raw_publish_async"].append(await raw_async(nc, args.n))
            await purge(js)
            rows["publish_many"].append(await ours_many(publisher, args.n))
            await purge(js)
            rows["raw_publish_awaited"].append(await raw_sync(nc, args.n_sync))
            rows["publish"].append(await ours_sync(publisher, args.n_sync))
            await purge(js)
        med = {k: statistics.median(v) for k, v in rows.items()}
        lat = [await latency(nc, publisher, rate, args.latency_seconds) for rate in (1000, 5000)]
        await nc.close()
    return {
        "throughput_events_per_s": med,
        "rounds": rows,
        "ratios": {
            "publish_many_vs_raw_publish_async": med["publish_many"] / med["raw_publish_async"],
            "publish_vs_raw_awaited": med["publish"] / med["raw_publish_awaited"],
        },
        "latency": lat,
        "goals": {"publish_many_ratio": 0.8, "p99_ms_at_5k": 5.0},
    }


def report(result: dict) -> None:
    t = result["throughput_events_per_s"]
    r = result["ratios"]
    print("\npublisher throughput (median of rounds, events/s)")
    print(f"  raw nats-py publish_async     {t['raw_publish_async']:>10,.0f}   1.00")
    print(
        f"  Publisher.publish_many        {t['publish_many']:>10,.0f}   {r['publish_many_vs_raw_publish_async']:.2f}x  (goal >= 0.80x)"
    )
    print(f"  raw awaited js.publish        {t['raw_publish_awaited']:>10,.0f}   1.00")
    print(
        f"  Publisher.publish             {t['publish']:>10,.0f}   {r['publish_vs_raw_awaited']:.2f}x"
    )
    print("\npublish -> consume latency (Publisher + Consumer helper, one process)")
    print("  rate/s       n     p50 ms   p99 ms  p99.9 ms   max ms")
    for row in result["latency"]:
        print(
            f"  {row['rate']:>6} {row['n']:>7} {row['p50_ms']:>9.2f} {row['p99_ms']:>8.2f} {row['p999_ms']:>9.2f} {row['max_ms']:>8.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="events per throughput round")
    parser.add_argument("--n-sync", type=int, default=3_000, help="events per sequential round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.n_sync, args.rounds, args.latency_seconds = 5_000, 1_000, 1, 2.0
    result = asyncio.run(main(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    report(result)
    print(f"\nwritten {RESULTS.relative_to(ROOT)}")
