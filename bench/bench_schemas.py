"""Schema validation and registry benchmark.

1. Local validation of a typical ~1 KB event, one core: jsonschema-rs (raw, and through
   ``SchemaCache.validate_data``), fastjsonschema and jsonschema, on the same data. Goal:
   >= 50k events/s with the cache.
2. Its cost as a fraction of a JetStream publish, measured in the same run against a real
   nats-server: raw nats-py ``js.publish`` awaited one by one, and pipelined ``publish_async``.
3. Registry request latency over NATS (p50/p99): get latest, idempotent register, check,
   validate, against one in-process replica.

Usage: ``uv run python bench/bench_schemas.py [--seconds 1.0] [--requests 2000]``.
Writes ``bench/results/schemas.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema
import jsonschema  # type: ignore[import-untyped]  # bench-only reference library, no stubs
import jsonschema_rs
import nats
import orjson

from backbone.schemas import RegistryClient, SchemaCache, SchemaRecord, fingerprint
from backbone.settings import NatsSettings
from backbone.testing import NatsServer
from schema_registry.app import create_app
from schema_registry.settings import RegistrySettings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
EVENT_TYPE = "mcp.server.error"

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "error": {"type": "string", "minLength": 1},
        "severity": {"type": "number", "minimum": 0, "maximum": 1},
        "server": {"type": "string"},
        "tool": {"type": "string"},
        "attempt": {"type": "integer", "minimum": 0},
        "retryable": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
        "request": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "method": {
                    "type": "string",
                    "enum": ["tools/call", "resources/read", "prompts/get"],
                },
                "duration_ms": {"type": "number", "minimum": 0},
                "arguments": {"type": "object"},
            },
            "required": ["id", "method"],
        },
        "context": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["error", "severity"],
}

DATA: dict[str, Any] = {
    "error": "Connection timeout calling the filesystem server: read ETIMEDOUT after 30000 ms",
    "severity": 0.8,
    "server": "filesystem",
    "tool": "read_file",
    "attempt": 3,
    "retryable": True,
    "tags": ["mcp", "timeout", "filesystem", "prod", "eu-west-1"],
    "request": {
        "id": "req-7f3c2a9e-4b1d-4c8e-9a57-1d2e3f4a5b6c",
        "method": "tools/call",
        "duration_ms": 30012.5,
        "arguments": {"path": "/home/user/projects/backbone/README.md", "encoding": "utf-8"},
    },
    "context": {
        "host": "worker-3.internal",
        "region": "eu-west-1",
        "session": "sess-0a1b2c3d4e5f",
        "trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "agent": "claude-code/1.0 (linux; x86_64)",
        "user": "user-42",
        "note": "retry budget exhausted after three attempts with exponential backoff",
        "deployment": "backbone-mcp-gateway-7d9f8c6b5-x2k4p",
        "commit": "9f2c4e1a7b3d5f6e8a0c2b4d6f8e0a1c3b5d7f9e",
        "workspace": "/home/user/projects/backbone",
        "client": "claude-desktop/0.9.3",
    },
}


def rate(fn: Any, seconds: float) -> float:
    """Calls per second of ``fn()`` over about ``seconds`` (after a warm-up)."""
    for _ in range(200):
        fn()
    n, batch = 0, 1000
    started = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return n / elapsed


def bench_validation(seconds: float) -> dict[str, float]:
    assert jsonschema_rs.validator_for(SCHEMA).is_valid(DATA)
    rs = jsonschema_rs.validator_for(SCHEMA)
    fast = fastjsonschema.compile(SCHEMA)
    py = jsonschema.Draft202012Validator(SCHEMA)
    cache = SchemaCache()
    cache.apply(SchemaRecord(EVENT_TYPE, 1, SCHEMA, fingerprint(SCHEMA), ""))
    assert py.is_valid(DATA)
    fast(DATA)
    return {
        "jsonschema_rs": rate(lambda: rs.is_valid(DATA), seconds),
        "schema_cache": rate(lambda: cache.validate_data(EVENT_TYPE, DATA), seconds),
        "fastjsonschema": rate(lambda: fast(DATA), seconds),
        "jsonschema": rate(lambda: py.is_valid(DATA), seconds / 2),
    }


async def bench_publish(url: str, count: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"])
    payload = orjson.dumps(DATA)
    started = time.perf_counter()
    for i in range(count // 4):
        await js.publish("bench.awaited", payload, headers={"Nats-Msg-Id": f"a-{i}"})
    awaited = (count // 4) / (time.perf_counter() - started)
    started = time.perf_counter()
    futures = [
        await js.publish_async("bench.async", payload, headers={"Nats-Msg-Id": f"p-{i}"})
        for i in range(count)
    ]
    await asyncio.gather(*futures)
    pipelined = count / (time.perf_counter() - started)
    await nc.close()
    return {"js_publish_awaited": awaited, "js_publish_pipelined": pipelined}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


async def bench_registry(url: str, requests: int) -> dict[str, dict[str, float]]:
    app = create_app(RegistrySettings(nats=NatsSettings(servers=[url])), with_ops_server=False)
    await app.start()
    nc = await nats.connect(url)
    client = RegistryClient(nc)
    await client.register(EVENT_TYPE, SCHEMA)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get_latest": lambda: client.get(EVENT_TYPE),
        "register_idempotent": lambda: client.register(EVENT_TYPE, SCHEMA),
        "check": lambda: client.check(EVENT_TYPE, SCHEMA),
        "validate": lambda: client.validate(EVENT_TYPE, DATA),
    }
    out = {}
    for name, call in calls.items():
        n = requests if name == "get_latest" else max(100, requests // 4)
        for _ in range(50):
            await call()
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - started)
        out[name] = {"requests": n, **percentiles(samples)}
    await nc.close()
    await app.stop()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    validation = bench_validation(args.seconds)
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        publish = await bench_publish(server.url, args.publishes)
        registry = await bench_registry(server.url, args.requests)
    cache_rate = validation["schema_cache"]
    return {
        "event_bytes": len(orjson.dumps(DATA)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "validation_per_s": validation,
        "validation_vs_fastest_alternative": cache_rate
        / max(validation["fastjsonschema"], validation["jsonschema"]),
        "publish_per_s": publish,
        # Time of one validation as a fraction of the time of one publish.
        "validation_cost_vs_publish_awaited": publish["js_publish_awaited"] / cache_rate,
        "validation_cost_vs_publish_pipelined": publish["js_publish_pipelined"] / cache_rate,
        "goal_50k_per_s_met": cache_rate >= 50_000,
        "registry_latency": registry,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\nevent size: {result['event_bytes']} bytes\n")
    print(f"{'validator (one core)':<28}{'events/s':>14}{'vs cache':>10}")
    cache_rate = result["validation_per_s"]["schema_cache"]
    for name, value in result["validation_per_s"].items():
        print(f"{name:<28}{value:>14,.0f}{value / cache_rate:>10.2f}")
    print()
    for name, value in result["publish_per_s"].items():
        print(f"{name:<28}{value:>14,.0f}")
    awaited = result["validation_cost_vs_publish_awaited"]
    pipelined = result["validation_cost_vs_publish_pipelined"]
    print(f"\nvalidation cost / awaited publish:   {awaited:.1%}")
    print(f"validation cost / pipelined publish: {pipelined:.1%}")
    print(f"goal >= 50k/s met: {result['goal_50k_per_s_met']}\n")
    print(f"{'registry request':<24}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for name, stats in result["registry_latency"].items():
        print(f"{name:<24}{stats['requests']:>6}{stats['p50_ms']:>10.3f}{stats['p99_ms']:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per validator")
    parser.add_argument("--publishes", type=int, default=8000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/schemas.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
