"""The JetStream publish wire: one header encoder and one PubAck inbox for every publisher.

nats-py builds a message's header block in Python, one header at a time (strip, regex check,
``str.translate``, three ``bytearray.extend``): about 0.7 us per header, so a binary-mode
CloudEvent's 8-10 headers cost more than the rest of a publish. Each ``js.publish`` also draws a
random inbox token (``os.urandom``), waits through ``asyncio.wait_for`` and parses its PubAck with
the ``json`` module and ``dataclasses.fields``. :class:`JetStreamSender` sends the same bytes:

* :func:`encode_headers` joins the block in one pass and checks it with one C-level regex match;
  anything the fast path cannot prove identical to nats-py's output (unknown header names,
  surrounding whitespace, CR/LF, non-ASCII) takes nats-py's own rules, so the wire bytes are the
  same either way (tests compare them byte for byte with nats-py's encoder);
* PubAcks come back on one wildcard inbox of our own, keyed by a counter, parsed with orjson, and
  settled as nats-py's reader hands them over (the subscription's message queue is replaced, so
  no queue, task switch or callback frame per reply); request timeouts share one timer per 10 ms
  tick (no wrapping task, no timer per request).

It writes through nats-py's internals (the connection's pending buffer and flusher, the reply
subscription's queue), which this project pins in ``uv.lock``. :func:`wire_supported` checks the
connection's once per client and the inbox checks the subscription's; without them (another
nats-py) the sender falls back to the public ``publish``/``publish_async`` API or to a callback
subscription: same behaviour, slower.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import weakref
from typing import TYPE_CHECKING, Any, Final

import nats.errors
import nats.js.errors
import orjson
from nats.js.api import PubAck

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

_HEADER_LINE: Final = b"NATS/1.0\r\n"
# Header lines nats-py would send unchanged: a token name (its _HEADER_KEY_RE) and a value of
# printable ASCII without surrounding spaces (nothing for strip() or the CR/LF translation to do).
_SAFE_BLOCK: Final = re.compile(
    r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: (?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?\r\n)*"
)
_HEADER_KEY: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_NEWLINES: Final = str.maketrans({"\r": " ", "\n": " "})
_STATUS_HEADER: Final = "Status"
_NO_RESPONDERS: Final = "503"
# Entries of given-up publish_async futures are swept once the map grows past this.
_SWEEP_AT: Final = 16_384
_TIMEOUT_TICK_S: Final = 0.01
# What _Replies stands in for on the reply subscription (nats-py's Subscription).
_SUBSCRIPTION_INTERNALS: Final = ("_pending_queue", "_pending_size")
_REQUIRED_INTERNALS: Final = (
    "_pending",
    "_flush_pending",
    "_flush_queue",
    "_max_pending_size",
    "_pending_data_size",
    "_max_payload",
    "stats",
)


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The NATS header block of ``headers``, exactly as nats-py's ``publish`` would send it.

    Raises:
        nats.errors.BadHeaderError: a header name that is not an RFC 7230 token.
    """
    text = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    if _SAFE_BLOCK.fullmatch(text) is not None:
        return _HEADER_LINE + text.encode() + b"\r\n"
    return _encode_headers_carefully(headers)


def _encode_headers_carefully(headers: Mapping[str, str]) -> bytes:
    # nats-py's rules (aio/client.py, _send_publish): names stripped, empty ones skipped, others
    # must be tokens; values stripped, CR/LF turned into spaces, UTF-8.
    lines = [_HEADER_LINE]
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        if not _HEADER_KEY.fullmatch(key):
            raise nats.errors.BadHeaderError(key)
        lines.append(f"{key}: {v.strip().translate(_VALUE_NEWLINES)}\r\n".encode())
    lines.append(b"\r\n")
    return b"".join(lines)


def wire_supported(nc: Client) -> bool:
    """Whether ``nc`` has the nats-py internals :class:`JetStreamSender` writes through."""
    return all(hasattr(nc, name) for name in _REQUIRED_INTERNALS)


def pub_ack(data: bytes) -> PubAck:
    """A PubAck from its JSON reply.

    Raises:
        nats.js.errors.APIError: the reply is JetStream's error (its subclass by code).
    """
    resp = orjson.loads(data)
    if "error" in resp:
        nats.js.errors.APIError.from_error(resp["error"])  # raises
    # Only the fields the server sends for a plain publish (PubAck.from_response walks every
    # dataclass field per call); the rest keep their defaults.
    return PubAck(
        stream=resp["stream"],
        seq=resp["seq"],
        domain=resp.get("domain"),
        duplicate=resp.get("duplicate"),
    )


class JetStreamSender:
    """Publishes to JetStream with pre-encoded headers; PubAcks arrive on one inbox.

    Behaves like nats-py's ``js.publish`` / ``js.publish_async`` (same errors: ``TimeoutError``,
    ``NoStreamResponseError``, ``APIError`` subclasses, connection errors), minus their per-call
    overhead. Use :func:`sender_for` to share one per connection (its inbox subscription lives as
    long as the connection).

    Args:
        nc: A connected nats-py client.
        timeout_s: Default PubAck timeout of :meth:`publish`.
    """

    def __init__(self, nc: Client, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self.timeout_s = timeout_s
        self.fast = wire_supported(nc)
        self._js: JetStreamContext | None = None if self.fast else nc.jetstream()
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}
        self._timeouts: dict[int, list[str]] = {}
        self._loop: asyncio.AbstractEventLoop  # set with the inbox, before any send
        self._sub: Subscription | None = None
        self._starting: asyncio.Lock | None = None

    async def _inbox(self) -> str:
        if self._sub is not None:
            return self._prefix
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._sub is None:
                # The connection's loop: a client lives on one loop, so does its sender.
                self._loop = asyncio.get_running_loop()
                prefix = self._nc.new_inbox() + "."
                sub = await self._nc.subscribe(prefix + "*")
                if all(hasattr(sub, name) for name in _SUBSCRIPTION_INTERNALS):
                    sub._pending_queue = _Replies(self, sub)  # type: ignore[assignment]  # noqa: SLF001
                else:  # another nats-py: the callback path, one task hop per reply
                    await sub.unsubscribe()
                    sub = await self._nc.subscribe(prefix + "*", cb=self._on_reply)
                self._sub = sub
                self._prefix = prefix
        return self._prefix

    async def _on_reply(self, msg: Msg) -> None:
        self._settle(msg)

    def _settle(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        headers = msg.headers
        if headers and headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            future.set_result(pub_ack(msg.data))
        except Exception as exc:  # noqa: BLE001 - JetStream's error or a malformed reply
            future.set_exception(exc)

    def _write(self, subject: str, reply: str, payload: bytes, block: bytes) -> bool:
        """Queue the HPUB on the connection; True when the flusher must be kicked.

        nats-py's ``Client.publish`` checks, then its ``_send_publish`` + ``_send_command`` with
        the block already built, without their two coroutine frames.
        """
        nc: Any = self._nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        size = len(payload)
        max_pending = nc._max_pending_size  # noqa: SLF001
        if not nc.is_connected and (
            max_pending <= 0 or size + nc._pending_data_size > max_pending  # noqa: SLF001
        ):
            raise nats.errors.OutboundBufferLimitError
        if size > nc._max_payload:  # noqa: SLF001
            raise nats.errors.MaxPayloadError
        if not subject:
            raise nats.errors.BadSubjectError
        block_size = len(block)
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        command = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
            subject.encode(),
            reply.encode(),
            block_size,
            block_size + size,
            block,
            payload,
        )
        nc._pending.append(command)  # noqa: SLF001
        nc._pending_data_size += len(command)  # noqa: SLF001
        if 0 < max_pending < nc._pending_data_size:  # noqa: SLF001
            return True
        flush_queue = nc._flush_queue  # noqa: SLF001
        return flush_queue is not None and flush_queue.empty()

    def _start(
        self, subject: str, prefix: str, payload: bytes, headers: Mapping[str, str]
    ) -> tuple[str, asyncio.Future[PubAck], bool]:
        """Register a reply token and queue the message: ``(token, future, flush needed)``."""
        token, future = self._register()
        try:
            flush = self._write(subject, prefix + token, payload, encode_headers(headers))
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return token, future, flush

    async def _flush(self, token: str) -> None:
        nc: Any = self._nc
        max_pending = nc._max_pending_size  # noqa: SLF001
        try:
            # Over the pending limit nats-py flushes synchronously (force), as its publish does.
            await nc._flush_pending(force_flush=0 < max_pending < nc._pending_data_size)  # noqa: SLF001
        except BaseException:
            self._waiting.pop(token, None)
            raise

    def _expire_after(self, token: str, timeout_s: float) -> None:
        # Deadlines share one timer per 10 ms tick: a timer per request costs ~2 us with uvloop
        # (a libuv timer each), more than the rest of the send. A timeout fires up to one tick
        # late. The tick keeps tokens, not futures: an answered request is gone from _waiting,
        # so what the ticks hold until they fire is a few short strings per request.
        loop = self._loop
        tick = math.ceil((loop.time() + timeout_s) / _TIMEOUT_TICK_S)
        due = self._timeouts.get(tick)
        if due is None:
            due = self._timeouts[tick] = []
            loop.call_at(tick * _TIMEOUT_TICK_S, self._expire, tick)
        due.append(token)

    def _expire(self, tick: int) -> None:
        waiting = self._waiting
        for token in self._timeouts.pop(tick, ()):
            future = waiting.get(token)
            if future is not None and not future.done():
                future.set_exception(nats.errors.TimeoutError())

    def _register(self) -> tuple[str, asyncio.Future[PubAck]]:
        waiting = self._waiting
        if len(waiting) >= _SWEEP_AT:
            for token in [t for t, f in waiting.items() if f.done()]:
                del waiting[token]
        token = str(next(self._tokens))
        future: asyncio.Future[PubAck] = self._loop.create_future()
        waiting[token] = future
        return token, future

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        *,
        timeout_s: float | None = None,
    ) -> PubAck:
        """Publish and wait for the PubAck.

        Raises:
            nats.errors.TimeoutError: no PubAck within the timeout.
            nats.js.errors.NoStreamResponseError: no stream captures ``subject``.
            nats.js.errors.APIError: JetStream refused the message.
            nats.errors.Error: connection state (closed, draining, buffer full, max payload).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if self._js is not None:
            try:
                return await self._js.publish(
                    subject, payload, timeout=timeout_s, headers=dict(headers)
                )
            except nats.errors.NoRespondersError:
                raise nats.js.errors.NoStreamResponseError from None
        token, future, flush = self._start(
            subject, self._prefix or await self._inbox(), payload, headers
        )
        if flush:
            await self._flush(token)
        self._expire_after(token, timeout_s)
        try:
            return await future
        finally:
            self._waiting.pop(token, None)

    async def publish_async(
        self, subject: str, payload: bytes, headers: Mapping[str, str]
    ) -> asyncio.Future[PubAck]:
        """Send and return the future of the PubAck (no timeout: the caller bounds the wait).

        A caller that gives up on the future cancels it; its entry is dropped later.

        Raises:
            nats.errors.Error: connection state (closed, draining, buffer full, max payload).
        """
        if self._js is not None:
            return await self._js.publish_async(subject, payload, headers=dict(headers))
        token, future, flush = self._start(
            subject, self._prefix or await self._inbox(), payload, headers
        )
        if flush:
            await self._flush(token)
        return future


_senders: weakref.WeakKeyDictionary[Client, JetStreamSender] = weakref.WeakKeyDictionary()


def sender_for(nc: Client) -> JetStreamSender:
    """The connection's sender: one PubAck inbox per connection, shared by its publishers."""
    sender = _senders.get(nc)
    if sender is None:
        sender = _senders[nc] = JetStreamSender(nc)
    return sender


class _Replies:
    """The reply subscription's message queue, replaced: each PubAck settles its future at once.

    nats-py's reader hands every message of a subscription to ``put_nowait`` of its pending
    queue; with a callback a task then takes it off the queue and awaits the callback. Here the
    reader's ``put_nowait`` settles the future directly: no queue, no task switch, no frame.
    """

    def __init__(self, sender: JetStreamSender, sub: Subscription) -> None:
        self._sender = sender
        self._sub = sub

    def put_nowait(self, msg: Msg) -> None:
        # nats-py counted the bytes as pending before handing them over; they are handled now.
        self._sub._pending_size -= len(msg.data)  # noqa: SLF001
        self._sender._settle(msg)  # noqa: SLF001

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        """Nothing is ever queued."""

    async def join(self) -> None:
        """Nothing is ever queued."""

    async def get(self) -> Msg:
        await asyncio.get_running_loop().create_future()  # never: nothing is queued
        raise AssertionError
