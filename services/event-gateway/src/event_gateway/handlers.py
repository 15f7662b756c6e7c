"""HTTP handlers: parse the CloudEvents HTTP binding and webhooks, delegate to the service.

Content mode detection follows the HTTP binding (section 3): a ``Content-Type`` starting with
``application/cloudevents-batch`` is batched mode, one starting with ``application/cloudevents``
is structured mode, anything else is binary mode (``ce-*`` headers, percent-decoded; the body is
the data and ``Content-Type`` its ``datacontenttype``). Only the JSON event format is supported;
another format is 415.

Batched mode answers per event: ``202`` when every event was stored, otherwise ``207
Multi-Status`` with ``results[i]`` = ``{"index", "status": 202, "id", "stream", "seq",
"duplicate"}`` or ``{"index", "status": 4xx/5xx, "problem": {...}}``. Problems that concern the
request as a whole (auth, rate limit, size, body not a JSON array) are one problem document.
"""

from __future__ import annotations

import contextlib
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import orjson
import yaml
from starlette.responses import Response, StreamingResponse

from backbone.errors import EventError
from backbone.events import CloudEvent, decode_http_header_value, from_binary_parts, from_json
from event_gateway.auth import Principal
from event_gateway.problems import PROBLEM_CONTENT_TYPE, ProblemError
from event_gateway.webhooks import generic_event, github_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from starlette.requests import Request
    from starlette.types import Message, Receive, Scope, Send

    from backbone.messaging import PublishResult
    from event_gateway.auth import KeyStore
    from event_gateway.service import GatewayService
    from event_gateway.settings import GatewaySettings

_log = logging.getLogger(__name__)

JSON: Final = "application/json"
_CE_PREFIX: Final = b"ce-"
_CLOUDEVENTS: Final = "application/cloudevents"
_BATCH: Final = "application/cloudevents-batch"
_STRUCTURED_JSON: Final = "application/cloudevents+json"
_BATCH_JSON: Final = "application/cloudevents-batch+json"
_WEBHOOK_SCOPES: Final = ("github",)
_JSON_HEADERS: Final = {"content-type": JSON}
_JSON_CONTENT_TYPE: Final = (b"content-type", JSON.encode("ascii"))


def _json(body: object, status: int = 202) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def load_openapi() -> bytes:
    """The OpenAPI document shipped with the package (``openapi.yaml``)."""
    return resources.files("event_gateway").joinpath("openapi.yaml").read_bytes()


class Runtime:
    """What the handlers need once the app has started (set by the lifespan)."""

    def __init__(self, settings: GatewaySettings, keys: KeyStore) -> None:
        self.settings = settings
        self.keys = keys
        self.service: GatewayService | None = None
        self.tail_clients = 0
        self.github_secret: bytes | None = None

    @property
    def ready_service(self) -> GatewayService:
        """The service, or 503 while starting or stopping."""
        service = self.service
        if service is None:
            raise ProblemError(
                503, "unavailable", "gateway is starting or stopping", retry_after_s=1
            )
        return service


class Handlers:
    """The endpoints; see ``openapi.yaml`` for the contract."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        section = runtime.settings.gateway
        self.max_event_bytes = section.max_event_bytes
        self.max_batch_bytes = section.max_batch_bytes
        self.max_batch_events = section.max_batch_events
        self._openapi_yaml = load_openapi()
        self._openapi_json = orjson.dumps(yaml.safe_load(self._openapi_yaml))

    # -- shared steps ----------------------------------------------------------------------

    def _principal(self, request: Request) -> Principal:
        headers = request.headers
        client = request.client
        return self.runtime.keys.authenticate(
            headers.get("authorization"),
            headers.get("x-api-key"),
            client.host if client is not None else None,
        )

    async def _body(self, request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                raise ProblemError(
                    400,
                    "invalid-header",
                    "Content-Length is not a number",
                    attribute="content-length",
                ) from None
            if too_large:
                raise ProblemError(413, "too-large", f"body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProblemError(413, "too-large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _accepted(result: PublishResult) -> dict[str, Any]:
        return {
            "id": result.id,
            "subject": result.subject,
            "stream": result.stream,
            "seq": result.seq,
            "duplicate": result.duplicate,
        }

    # -- POST /v1/events -------------------------------------------------------------------

    async def _guard(
        self, handler: Callable[[Request], Awaitable[Response]], request: Request
    ) -> Response:
        try:
            return await handler(request)
        except ProblemError as problem:
            return self._refuse(problem)

    async def post_events(self, request: Request) -> Response:
        """Accept one event (binary or structured mode) or a batch (Starlette route form)."""
        status, body, headers = await self.ingest(request.scope, request.receive)
        return Response(body, status_code=status, headers=dict(headers))

    async def post_events_asgi(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
        traced: bool = True,
    ) -> int:
        """``POST /v1/events`` as a bare ASGI app (the hot path skips Starlette's machinery).

        Args:
            scope: The ASGI scope.
            receive: The ASGI receive callable.
            send: The ASGI send callable.
            extra_headers: Response headers to add (the trace headers of the middleware).
            traced: False when no span can be current (no ``traceparent``, spans not recorded).

        Returns:
            The response status (for the request metrics).
        """
        try:
            status, body, headers = await self._ingest(scope, receive, traced=traced)
        except ProblemError as problem:
            status, body, headers = self._problem_reply(problem)
        if headers is _JSON_HEADERS:  # every success: the header list without a dict walk
            response_headers = [_JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(body))]
        else:
            response_headers = [
                (b"content-type", headers["content-type"].encode("latin-1")),
                (b"content-length", b"%d" % len(body)),
                *(
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in headers.items()
                    if k != "content-type"
                ),
            ]
        if extra_headers:
            response_headers.extend(extra_headers)
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        return status

    async def ingest(self, scope: Scope, receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        """Run ``POST /v1/events``: ``(status, body, headers)``, problems rendered."""
        try:
            return await self._ingest(scope, receive)
        except ProblemError as problem:
            return self._problem_reply(problem)

    def _problem_reply(self, problem: ProblemError) -> tuple[int, bytes, dict[str, str]]:
        """A refusal as ``(status, body, headers)``, counted by reason."""
        service = self.runtime.service
        if service is not None:
            service.count_rejection(problem)
        headers = {"content-type": PROBLEM_CONTENT_TYPE}
        retry = problem.retry_after_header
        if retry is not None:
            headers["retry-after"] = retry
        return problem.status, orjson.dumps(problem.to_dict()), headers

    async def _ingest(  # noqa: C901 - the hot path, one pass
        self, scope: Scope, receive: Receive, *, traced: bool = True
    ) -> tuple[int, bytes, dict[str, str]]:
        # One pass over the raw headers (lower-case names per ASGI): cheaper than a Headers map.
        authorization = api_key = content_type = declared = None
        ce_headers: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name[:3] == _CE_PREFIX:
                ce_headers.append((name, value))
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
        service = self.runtime.ready_service
        client = scope.get("client")
        principal = self.runtime.keys.authenticate(
            authorization, api_key, client[0] if client else None
        )
        service.check_rate(principal)
        content_type = content_type or ""
        lowered = content_type.lstrip().lower()
        if lowered.startswith(_BATCH):
            return await self._batch(
                receive, declared, service, principal=principal, content_type=content_type
            )
        # One event's body nearly always arrives in one message: take it without another frame.
        limit = self.max_event_bytes
        _check_declared(declared, limit)
        message = await receive()
        body = message.get("body", b"")
        if (
            message["type"] != "http.request"
            or message.get("more_body", False)
            or len(body) > limit
        ):
            body = await _read_body(receive, None, limit, first=message)
        if lowered.startswith(_CLOUDEVENTS):
            if _media_type(content_type) != _STRUCTURED_JSON:
                raise ProblemError(
                    415,
                    "unsupported-media-type",
                    f"unsupported event format {_media_type(content_type)!r} "
                    f"(only {_STRUCTURED_JSON})",
                    attribute="content-type",
                )
            event = _parse(lambda: from_json(body))
        else:
            event = self._binary(ce_headers, content_type, body)
        prepared, subject = service.prepare(event, principal)
        result = await service.publish(prepared, subject, traced=traced)
        return 202, orjson.dumps(self._accepted(result)), _JSON_HEADERS

    def _refuse(self, problem: ProblemError) -> Response:
        service = self.runtime.service
        if service is not None:
            service.count_rejection(problem)
        return problem.response()

    def _binary(
        self, ce_headers: list[tuple[bytes, bytes]], content_type: str, body: bytes
    ) -> CloudEvent:
        attributes: dict[str, str] = {}
        header_size = 0
        for raw_name, raw_value in ce_headers:
            name = raw_name[3:].decode("latin-1")
            header_size += len(raw_name) + len(raw_value)
            if name in attributes:
                raise ProblemError(
                    400,
                    "invalid-header",
                    f"header ce-{name} appears more than once",
                    attribute=name,
                )
            if name == "datacontenttype":
                raise ProblemError(
                    400,
                    "invalid-header",
                    "binary mode carries datacontenttype in Content-Type; ce-datacontenttype "
                    "must not be present (HTTP binding 3.1.1)",
                    attribute=name,
                )
            try:
                attributes[name] = decode_http_header_value(raw_value.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProblemError(
                    400, "invalid-header", f"header ce-{name} is not UTF-8", attribute=name
                ) from None
            except EventError as exc:
                raise ProblemError(400, "invalid-header", str(exc), attribute=name) from None
        if not attributes:
            raise ProblemError(
                415,
                "unsupported-media-type",
                "not a CloudEvent: use binary mode (ce-* headers) or Content-Type "
                f"{_STRUCTURED_JSON} / {_BATCH_JSON}",
                attribute="content-type",
            )
        if header_size + len(body) > self.max_event_bytes:
            raise ProblemError(413, "too-large", f"event exceeds {self.max_event_bytes} bytes")
        content_type = content_type.strip()
        if content_type:
            attributes["datacontenttype"] = content_type
        try:
            return from_binary_parts(attributes, body)
        except EventError as exc:
            raise _invalid(exc) from None

    async def _batch(
        self,
        receive: Receive,
        declared: bytes | None,
        service: GatewayService,
        *,
        principal: Principal,
        content_type: str,
    ) -> tuple[int, bytes, dict[str, str]]:
        if _media_type(content_type) != _BATCH_JSON:
            raise ProblemError(
                415,
                "unsupported-media-type",
                f"unsupported batch format {_media_type(content_type)!r} (only {_BATCH_JSON})",
                attribute="content-type",
            )
        body = await _read_body(receive, declared, self.max_batch_bytes)
        items = _batch_items(body, self.max_batch_events)
        check_sizes = len(body) > self.max_event_bytes
        slots: list[dict[str, Any] | None] = [None] * len(items)
        ready: list[tuple[int, CloudEvent]] = []
        for index, item in enumerate(items):
            try:
                prepared = self._batch_item(item, service, principal, check_size=check_sizes)
            except ProblemError as problem:
                service.count_rejection(problem)
                slots[index] = _failed(index, problem, item)
            else:
                ready.append((index, prepared))
        if ready:
            outcomes = await service.publish_batch([event for _, event in ready])
            for (index, _event), outcome in zip(ready, outcomes, strict=True):
                if isinstance(outcome, ProblemError):
                    service.count_rejection(outcome)
                    slots[index] = _failed(index, outcome, None)
                else:
                    slots[index] = {"index": index, "status": 202, **self._accepted(outcome)}
        results = [slot for slot in slots if slot is not None]
        accepted = sum(1 for slot in results if slot["status"] == 202)  # noqa: PLR2004
        status = 202 if accepted == len(results) else 207
        body = orjson.dumps(
            {"accepted": accepted, "rejected": len(results) - accepted, "results": results}
        )
        return status, body, _JSON_HEADERS

    def _batch_item(
        self, item: object, service: GatewayService, principal: Principal, *, check_size: bool
    ) -> CloudEvent:
        if not isinstance(item, dict):
            raise ProblemError(400, "invalid-body", "batch items must be JSON objects")
        if check_size and len(orjson.dumps(item)) > self.max_event_bytes:
            raise ProblemError(413, "too-large", f"event exceeds {self.max_event_bytes} bytes")
        event = _parse(lambda: CloudEvent.from_dict(item))
        prepared, _subject = service.prepare(event, principal)
        return prepared

    # -- webhooks --------------------------------------------------------------------------

    async def post_github(self, request: Request) -> Response:
        """A GitHub delivery (``ping`` is answered 200, everything else 202)."""
        return await self._guard(self._post_github, request)

    async def _post_github(self, request: Request) -> Response:
        service = self.runtime.ready_service
        principal = Principal("webhook:github", _WEBHOOK_SCOPES)
        service.check_rate(principal)
        body = await self._body(request, self.max_event_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        event = github_event(headers, body, secret=self.runtime.github_secret)
        prepared, subject = service.prepare(event, principal)
        result = await service.publish(prepared, subject)
        answer = self._accepted(result)
        answer["type"] = prepared.type
        if prepared.type == "github.ping":
            return _json({**answer, "pong": True}, 200)
        return _json(answer)

    async def post_webhook(self, request: Request) -> Response:
        """A generic sender's delivery to ``/v1/webhooks/<name>``."""
        return await self._guard(self._post_webhook, request)

    async def _post_webhook(self, request: Request) -> Response:
        service = self.runtime.ready_service
        name = str(request.path_params["name"])
        hook = self.runtime.settings.gateway.webhooks.get(name)
        if hook is None:
            raise ProblemError(404, "unknown-webhook", f"no webhook named {name!r} is configured")
        principal = Principal(f"webhook:{name}", (hook.type_prefix or f"webhook.{name}",))
        service.check_rate(principal)
        body = await self._body(request, self.max_event_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        event = generic_event(name, hook, headers, body)
        prepared, subject = service.prepare(event, principal)
        result = await service.publish(prepared, subject)
        return _json({**self._accepted(result), "type": prepared.type})

    # -- GET /v1/events/stream -------------------------------------------------------------

    async def tail(self, request: Request) -> Response:
        """Live events on a subject pattern as Server-Sent Events (``id`` = stream sequence)."""
        return await self._guard(self._tail, request)

    def _tail_params(self, request: Request, principal: Principal) -> tuple[str, int | None]:
        pattern = request.query_params.get("subject", "").strip()
        if not pattern:
            raise ProblemError(
                400,
                "missing-parameter",
                "query parameter 'subject' is required",
                attribute="subject",
            )
        self.runtime.ready_service.stream_for_pattern(pattern)
        literal: list[str] = []
        for token in pattern.split("."):
            if token in {"*", ">"}:
                break
            literal.append(token)
        if not principal.allows(".".join(literal)):
            raise ProblemError(
                403,
                "forbidden-type",
                f"key {principal.name!r} may not read {pattern!r}",
                attribute="subject",
            )
        after = request.headers.get("last-event-id") or request.query_params.get("after")
        if after is None or not after.strip():
            return pattern, None
        text = after.strip()
        if not text.isascii() or not text.isdigit():
            raise ProblemError(
                400,
                "invalid-parameter",
                "Last-Event-ID must be a stream sequence number",
                attribute="last-event-id",
            )
        return pattern, int(text)

    async def _tail(self, request: Request) -> Response:
        service = self.runtime.ready_service
        principal = self._principal(request)
        service.check_rate(principal)
        pattern, after_seq = self._tail_params(request, principal)
        tail_settings = self.runtime.settings.gateway.tail
        if self.runtime.tail_clients >= tail_settings.max_clients:
            raise ProblemError(503, "unavailable", "too many tail clients", retry_after_s=5)

        async def events() -> AsyncIterator[bytes]:
            self.runtime.tail_clients += 1
            stream = service.tail(
                pattern, after_seq=after_seq, heartbeat_s=tail_settings.heartbeat_s
            )
            try:
                yield b": connected\n\n"
                async for item in stream:
                    if item is None:
                        yield b": keepalive\n\n"
                    else:
                        seq, data = item
                        yield b"id: %d\nevent: cloudevent\ndata: %s\n\n" % (seq, data)
            finally:
                self.runtime.tail_clients -= 1
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- OpenAPI ---------------------------------------------------------------------------

    async def openapi_yaml(self, _: Request) -> Response:
        """The OpenAPI document as YAML (the file kept in the repository)."""
        return Response(self._openapi_yaml, media_type="application/yaml")

    async def openapi_json(self, _: Request) -> Response:
        """The same document as JSON."""
        return Response(self._openapi_json, media_type=JSON)


def _check_declared(declared: bytes | None, limit: int) -> None:
    """Refuse a ``Content-Length`` over ``limit`` before reading anything."""
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            raise ProblemError(
                400, "invalid-header", "Content-Length is not a number", attribute="content-length"
            ) from None
        if too_large:
            raise ProblemError(413, "too-large", f"body exceeds {limit} bytes")


async def _read_body(
    receive: Receive, declared: bytes | None, limit: int, *, first: Message | None = None
) -> bytes:
    """The request body, refusing more than ``limit`` bytes (declared or actually sent).

    ``first``: the first ASGI message when the caller has already received it.
    """
    _check_declared(declared, limit)
    body = b""
    while True:
        if first is not None:
            message, first = first, None
        else:
            message = await receive()
        if message["type"] != "http.request":
            raise ProblemError(400, "invalid-body", "client disconnected before the body ended")
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            raise ProblemError(413, "too-large", f"body exceeds {limit} bytes")
        if not message.get("more_body", False):
            return body


def _batch_items(body: bytes, max_events: int) -> list[Any]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, "invalid-body", f"batch is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ProblemError(400, "invalid-body", "a batch must be a JSON array of CloudEvents")
    if len(items) > max_events:
        raise ProblemError(
            413,
            "too-many-events",
            f"batch holds {len(items)} events; the limit is {max_events}",
        )
    return items


def _parse(build: Any) -> CloudEvent:  # noqa: ANN401 - a zero-argument callable
    try:
        event: CloudEvent = build()
    except EventError as exc:
        raise _invalid(exc) from None
    return event


def _invalid(exc: EventError) -> ProblemError:
    return ProblemError(
        400, "invalid-attribute", str(exc), attribute=exc.attribute, event_id=exc.event_id
    )


def _failed(index: int, problem: ProblemError, item: object) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "status": problem.status, "problem": problem.to_dict()}
    event_id = problem.event_id
    if event_id is None and isinstance(item, dict) and isinstance(item.get("id"), str):
        event_id = item["id"]
    if event_id is not None:
        entry["id"] = event_id
    return entry
