"""A consumer process for the kill -9 fault test (run by test_messaging_faults.py).

usage: fault_consumer_main.py NATS_URL kv|pg OUT_FILE_OR_DSN
- kv: side effect = a line appended to OUT_FILE; KV idempotency store skips redeliveries.
- pg: side effect = a row in `effects`, committed with the processed id (PostgresIdempotency).
"""

import asyncio
import os
import signal
import sys

import nats
import psycopg

from backbone.events import dedup_id
from backbone.messaging import Consumer, IdempotencyStore, PostgresIdempotency


async def main() -> None:
    url, mode, target = sys.argv[1:4]
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = nc.jetstream()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if mode == "kv":
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        async def handler(event, delivery):
            os.write(fd, f"{event.id}\n".encode())

        consumer = Consumer(
            nc,
            stream="MCP_EVENTS",
            durable="fault",
            handler=handler,
            ack_wait_s=2.0,
            concurrency=8,
            batch=64,
            fetch_timeout_s=0.2,
            max_deliver=1000,
            idempotency=await IdempotencyStore.open(js),
        )
    else:
        conn = await psycopg.AsyncConnection.connect(target, autocommit=True)
        inbox = PostgresIdempotency()
        lock = asyncio.Lock()

        async def handler(event, delivery):
            async with lock, conn.transaction():
                if await inbox.claim(conn, f"fault.{dedup_id(event)}"):
                    await conn.execute("INSERT INTO effects (event_id) VALUES (%s)", (event.id,))

        consumer = Consumer(
            nc,
            stream="MCP_EVENTS",
            durable="fault",
            handler=handler,
            ack_wait_s=2.0,
            concurrency=8,
            batch=64,
            fetch_timeout_s=0.2,
            max_deliver=1000,
        )
    await consumer.start()
    print("ready", flush=True)
    await stop.wait()
    await consumer.stop()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
