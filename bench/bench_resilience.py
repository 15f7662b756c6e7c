"""Per-call overhead of the resilience patterns against the Python libraries that do the same job.

Every implementation wraps the same no-op (a coroutine, or a plain function for the sync rows) and
is called in a tight loop on the success path; the overhead is the time per call minus the bare
no-op's, measured in the same process and run (best of ``--repeat`` rounds of ``--calls`` calls).
Competitors: pybreaker, aiobreaker, purgatory (breaker), tenacity, stamina (retry), aiolimiter
(limiter); asyncio.Semaphore and asyncio.timeout are the stdlib references for the bulkhead and the
time limiter, and the "stack" row composes the competitors into the same five-pattern job.

    uv run python bench/bench_resilience.py [--calls 20000] [--repeat 5]

Writes ``bench/results/resilience.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiobreaker  # type: ignore[import-untyped]
import aiolimiter
import purgatory
import pybreaker
import stamina
import tenacity

from backbone.resilience import (
    Bulkhead,
    BulkheadConfig,
    CircuitBreaker,
    CircuitBreakerConfig,
    Policy,
    RateLimiter,
    RateLimiterConfig,
    Retry,
    RetryConfig,
    TimeLimiter,
    TimeLimiterConfig,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

RESULTS = Path(__file__).resolve().parent / "results" / "resilience.json"
HUGE_RATE = 1e12  # limiters that never make the no-op wait: we measure bookkeeping only


async def anoop() -> int:
    return 1


def noop() -> int:
    return 1


async def time_async(fn: Callable[[], Awaitable[Any]], calls: int, repeat: int) -> float:
    for _ in range(min(calls, 2000)):
        await fn()
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def time_sync(fn: Callable[[], Any], calls: int, repeat: int) -> float:
    for _ in range(min(calls, 2000)):
        fn()
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def ours_policy() -> Policy:
    return Policy(
        retry=Retry("bench", RetryConfig()),
        circuit_breaker=CircuitBreaker("bench", CircuitBreakerConfig()),
        rate_limiter=RateLimiter("bench", RateLimiterConfig(rate_per_s=HUGE_RATE)),
        bulkhead=Bulkhead("bench", BulkheadConfig(max_concurrent=100)),
        time_limiter=TimeLimiter("bench", TimeLimiterConfig(timeout_s=10.0)),
    )


def competitor_stack() -> Callable[[], Awaitable[int]]:
    """The same five-pattern job from the other libraries and the stdlib."""
    breaker = aiobreaker.CircuitBreaker(fail_max=5)
    limiter = aiolimiter.AsyncLimiter(HUGE_RATE, 1)
    semaphore = asyncio.Semaphore(100)

    @tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)
    async def call() -> int:
        async def inner() -> int:
            async with limiter, semaphore, asyncio.timeout(10.0):
                return await anoop()

        result: int = await breaker.call_async(inner)
        return result

    return call


async def async_rows(calls: int, repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base = await time_async(anoop, calls, repeat)

    def add(job: str, impl: str, per_call_us: float, *, ours: bool = False) -> None:
        rows.append(
            {
                "job": job,
                "impl": impl,
                "ours": ours,
                "per_call_us": round(per_call_us, 3),
                "overhead_us": round(max(per_call_us - base, 0.0), 3),
            }
        )
        print(f"  {job:<24} {impl:<28} {per_call_us - base:8.2f} us", flush=True)

    add("baseline (async no-op)", "await noop()", base)

    # -- circuit breaker ------------------------------------------------------------------
    add(
        "breaker (async)",
        "backbone",
        await time_async(CircuitBreaker("b")(anoop), calls, repeat),
        ours=True,
    )
    ab = aiobreaker.CircuitBreaker(fail_max=5)
    add("breaker (async)", "aiobreaker", await time_async(ab(anoop), calls, repeat))
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        purg = factory("bench")(anoop)
    add("breaker (async)", "purgatory", await time_async(purg, calls, repeat))

    # -- retry (success path) -------------------------------------------------------------
    add(
        "retry (async)",
        "backbone (with budget)",
        await time_async(Retry("r")(anoop), calls, repeat),
        ours=True,
    )
    ten = tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(anoop)
    add("retry (async)", "tenacity", await time_async(ten, calls, repeat))
    sta = stamina.retry(on=Exception, attempts=3)(anoop)
    add("retry (async)", "stamina", await time_async(sta, calls, repeat))

    # -- rate limiter ---------------------------------------------------------------------
    ours_rl = RateLimiter("l", RateLimiterConfig(rate_per_s=HUGE_RATE))
    add(
        "rate limiter (async)",
        "backbone",
        await time_async(ours_rl(anoop), calls, repeat),
        ours=True,
    )

    async def ours_rl_cm() -> int:
        async with ours_rl:
            return await anoop()

    add(
        "rate limiter (async)",
        "backbone (async with)",
        await time_async(ours_rl_cm, calls, repeat),
        ours=True,
    )
    aio = aiolimiter.AsyncLimiter(HUGE_RATE, 1)

    async def aio_cm() -> int:
        async with aio:
            return await anoop()

    add("rate limiter (async)", "aiolimiter (async with)", await time_async(aio_cm, calls, repeat))

    # -- bulkhead -------------------------------------------------------------------------
    add(
        "bulkhead (async)",
        "backbone",
        await time_async(Bulkhead("h", BulkheadConfig(max_concurrent=100))(anoop), calls, repeat),
        ours=True,
    )
    sem = asyncio.Semaphore(100)

    async def sem_cm() -> int:
        async with sem:
            return await anoop()

    add("bulkhead (async)", "asyncio.Semaphore (stdlib)", await time_async(sem_cm, calls, repeat))

    # -- time limiter ---------------------------------------------------------------------
    tl = TimeLimiter("t", TimeLimiterConfig(timeout_s=10.0))
    add("time limiter (async)", "backbone", await time_async(tl(anoop), calls, repeat), ours=True)

    async def std_timeout() -> int:
        async with asyncio.timeout(10.0):
            return await anoop()

    add(
        "time limiter (async)",
        "asyncio.timeout (stdlib)",
        await time_async(std_timeout, calls, repeat),
    )

    # -- all five -------------------------------------------------------------------------
    add(
        "composition (async)",
        "backbone Policy (5 patterns)",
        await time_async(ours_policy()(anoop), calls, repeat),
        ours=True,
    )
    add(
        "composition (async)",
        "stack of the references",
        await time_async(competitor_stack(), calls, repeat),
    )
    return rows


def sync_rows(calls: int, repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base = time_sync(noop, calls, repeat)

    def add(job: str, impl: str, per_call_us: float, *, ours: bool = False) -> None:
        rows.append(
            {
                "job": job,
                "impl": impl,
                "ours": ours,
                "per_call_us": round(per_call_us, 3),
                "overhead_us": round(max(per_call_us - base, 0.0), 3),
            }
        )
        print(f"  {job:<24} {impl:<28} {per_call_us - base:8.2f} us", flush=True)

    add("baseline (sync no-op)", "noop()", base)
    add(
        "breaker (sync)", "backbone", time_sync(CircuitBreaker("s")(noop), calls, repeat), ours=True
    )
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    add("breaker (sync)", "pybreaker", time_sync(pb(noop), calls, repeat))
    sfactory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spurg = sfactory("bench")(noop)
    add("breaker (sync)", "purgatory", time_sync(spurg, calls, repeat))
    add(
        "retry (sync)",
        "backbone (with budget)",
        time_sync(Retry("s")(noop), calls, repeat),
        ours=True,
    )
    add(
        "retry (sync)",
        "tenacity",
        time_sync(
            tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(noop), calls, repeat
        ),
    )
    add(
        "retry (sync)",
        "stamina",
        time_sync(stamina.retry(on=Exception, attempts=3)(noop), calls, repeat),
    )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    for job in dict.fromkeys(row["job"] for row in rows if not row["job"].startswith("baseline")):
        ours = [r for r in rows if r["job"] == job and r["ours"]]
        theirs = [r for r in rows if r["job"] == job and not r["ours"]]
        if not ours or not theirs:
            continue
        best_ours = min(ours, key=lambda r: r["overhead_us"])
        fastest = min(theirs, key=lambda r: r["overhead_us"])
        summary.append(
            {
                "job": job,
                "ours_impl": best_ours["impl"],
                "ours_overhead_us": best_ours["overhead_us"],
                "fastest_reference": fastest["impl"],
                "reference_overhead_us": fastest["overhead_us"],
                "ratio": round(best_ours["overhead_us"] / max(fastest["overhead_us"], 1e-9), 3),
            }
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    print(f"resilience overhead per call, best of {args.repeat} x {args.calls} calls")
    rows = asyncio.run(async_rows(args.calls, args.repeat))
    rows += sync_rows(args.calls, args.repeat)
    summary = summarise(rows)

    print()
    print(
        f"{'job':<24} {'backbone (us)':>14} {'fastest reference':<28} {'ref (us)':>9} {'ratio':>7}"
    )
    for s in summary:
        print(
            f"{s['job']:<24} {s['ours_overhead_us']:>14.2f} {s['fastest_reference']:<28} "
            f"{s['reference_overhead_us']:>9.2f} {s['ratio']:>7.2f}"
        )
    breaker_us = next(s["ours_overhead_us"] for s in summary if s["job"] == "breaker (async)")
    goal_met = all(s["ratio"] <= 1.0 for s in summary) and breaker_us < 5.0
    print(
        f"\nbreaker success path {breaker_us:.2f} us (goal < 5 us); "
        f"ratios <= 1 everywhere: {goal_met}"
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "resilience per-call overhead on the success path",
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "calls": args.calls,
                "repeat": args.repeat,
                "versions": {
                    "pybreaker": getattr(pybreaker, "__version__", "?"),
                    "aiobreaker": _version("aiobreaker"),
                    "purgatory": _version("purgatory"),
                    "tenacity": _version("tenacity"),
                    "stamina": _version("stamina"),
                    "aiolimiter": _version("aiolimiter"),
                },
                "rows": rows,
                "summary": summary,
                "breaker_success_path_us": breaker_us,
                "goal_met": goal_met,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {RESULTS}")


def _version(dist: str) -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version(dist)


if __name__ == "__main__":
    main()
