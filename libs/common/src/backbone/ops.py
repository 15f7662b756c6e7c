"""The operations HTTP endpoint of every Backbone service: ``/livez``, ``/readyz``, ``/metrics``.

Services that have no HTTP API of their own run an :class:`OpsServer` inside their event loop::

    ops = OpsServer(host=settings.http.host, port=settings.http.port, metrics=metrics,
                    readiness={"nats": lambda: nc.is_connected})
    await ops.start()          # listening; ops.port is the real port (port 0 = a free one)
    ...
    await ops.stop()

The event gateway builds its own Starlette app and adds :func:`ops_routes` to it instead.

Endpoints:

- ``GET /livez``: 200 ``{"status": "ok"}`` while the event loop answers (and every liveness
  check passes, when some are given); 503 otherwise. Kubernetes restarts the pod on failure, so
  keep liveness checks to "this process is wedged" conditions.
- ``GET /readyz``: runs every readiness check concurrently (each bounded by ``check_timeout_s``)
  and answers ``{"ready": bool, "checks": {"<name>": bool, ...}}`` plus ``"errors":
  {"<name>": "<ExcType>: <message>"}`` for checks that raised or timed out; 200 when all pass,
  503 when any fails.
- ``GET /metrics``: the :class:`~backbone.telemetry.Metrics` registry in Prometheus text format
  (only when metrics are given).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Self, TypeAlias

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from backbone.errors import BackboneError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from types import TracebackType

    from starlette.requests import Request

    from backbone.telemetry import Metrics

__all__ = ["Check", "OpsServer", "OpsServerError", "ops_routes", "run_checks"]

Check: TypeAlias = Callable[[], Awaitable[bool] | bool]
"""A health check: returns whether the dependency is fine, synchronously or as an awaitable."""

_log = logging.getLogger(__name__)
_JSON: Final = "application/json"
_STARTUP_POLL_S: Final = 0.005


class OpsServerError(BackboneError):
    """The operations server could not start (address in use, bad host).

    Attributes:
        host: The host it tried to bind.
        port: The port it tried to bind.
    """

    def __init__(self, message: str, *, host: str, port: int) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


async def _run_check(check: Check, timeout_s: float) -> tuple[bool, str | None]:
    try:
        # The timeout bounds async checks; a synchronous check must be quick by itself.
        async with asyncio.timeout(timeout_s):
            result = check()
            if inspect.isawaitable(result):
                result = await result
    except TimeoutError:
        return False, f"TimeoutError: check took longer than {timeout_s} s"
    except Exception as exc:  # noqa: BLE001 - any failure of a check means "not ready"
        return False, f"{type(exc).__name__}: {exc}"
    return bool(result), None


async def run_checks(
    checks: Mapping[str, Check], *, timeout_s: float
) -> tuple[bool, dict[str, bool], dict[str, str]]:
    """Run ``checks`` concurrently.

    Returns:
        ``(all passed, {name: passed}, {name: error message})``.
    """
    names = list(checks)
    outcomes = await asyncio.gather(*(_run_check(checks[name], timeout_s) for name in names))
    results = {name: ok for name, (ok, _) in zip(names, outcomes, strict=True)}
    errors = {name: err for name, (_, err) in zip(names, outcomes, strict=True) if err is not None}
    return all(results.values()), results, errors


def _json(payload: object, status_code: int) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type=_JSON)


def ops_routes(
    metrics: Metrics | None,
    readiness: Mapping[str, Check] | None = None,
    liveness: Mapping[str, Check] | None = None,
    *,
    check_timeout_s: float = 2.0,
) -> list[BaseRoute]:
    """The ``/livez``, ``/readyz`` and ``/metrics`` routes, to mount in any Starlette app.

    Args:
        metrics: Served on ``/metrics``; ``None`` leaves the route out.
        readiness: Named checks (sync or async, returning a bool) behind ``/readyz``.
        liveness: Named checks behind ``/livez``; none means "alive while the loop answers".
        check_timeout_s: Time limit of each async check.
    """
    ready_checks = dict(readiness or {})
    live_checks = dict(liveness or {})

    async def livez(_: Request) -> Response:
        if not live_checks:
            return _json({"status": "ok"}, 200)
        ok, results, errors = await run_checks(live_checks, timeout_s=check_timeout_s)
        body: dict[str, object] = {"status": "ok" if ok else "failing", "checks": results}
        if errors:
            body["errors"] = errors
        return _json(body, 200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok, results, errors = await run_checks(ready_checks, timeout_s=check_timeout_s)
        body: dict[str, object] = {"ready": ok, "checks": results}
        if errors:
            body["errors"] = errors
        return _json(body, 200 if ok else 503)

    routes: list[BaseRoute] = [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if metrics is not None:
        registry_metrics = metrics

        async def metrics_endpoint(_: Request) -> Response:
            body, content_type = registry_metrics.render()
            return Response(body, media_type=content_type)

        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    return routes


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the service it runs in."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service owns SIGTERM/SIGINT (it drains consumers first); uvicorn must not take them.
        yield


class OpsServer:
    """``/livez``, ``/readyz``, ``/metrics`` (and extra routes) served by uvicorn in this loop.

    Args:
        host: Interface to listen on (``settings.http.host``).
        port: Port to listen on; 0 picks a free one, readable from :attr:`port` after start.
        metrics: Registry served on ``/metrics``.
        readiness: Named readiness checks (see :func:`ops_routes`).
        liveness: Named liveness checks.
        extra_routes: More Starlette routes to serve next to the ops routes.
        check_timeout_s: Time limit of each async check.
        graceful_timeout_s: How long :meth:`stop` lets open requests finish.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics: Metrics | None = None,
        readiness: Mapping[str, Check] | None = None,
        liveness: Mapping[str, Check] | None = None,
        extra_routes: Iterable[BaseRoute] = (),
        check_timeout_s: float = 2.0,
        graceful_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._requested_port = port
        self._graceful_timeout_s = graceful_timeout_s
        self.app = Starlette(
            routes=[
                *ops_routes(metrics, readiness, liveness, check_timeout_s=check_timeout_s),
                *extra_routes,
            ]
        )
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8081`` (meaningful after :meth:`start`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server task is alive."""
        return self._task is not None and not self._task.done()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            return socket.create_server((self.host, self._requested_port), family=family)
        except OSError as exc:
            raise OpsServerError(
                f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror or exc}",
                host=self.host,
                port=self._requested_port,
            ) from exc

    async def start(self) -> None:
        """Bind, start serving in a task, and return once the server accepts connections.

        Raises:
            OpsServerError: When the address cannot be bound or the server fails to start.
        """
        if self.running:
            return
        # Binding here (not in uvicorn) gives a clear error instead of uvicorn's sys.exit, and
        # tells us the real port when port 0 was asked for.
        sock = self._bind()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,  # keep the service's logging setup (JSON lines)
            access_log=False,  # probes every few seconds would drown the logs
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=max(1, round(self._graceful_timeout_s)),
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="ops-server")
        while not server.started:
            if self._task.done():
                sock.close()
                exc = self._task.exception()
                self._task = None
                raise OpsServerError(
                    f"ops server failed to start: {exc!r}", host=self.host, port=self.port
                ) from exc
            await asyncio.sleep(_STARTUP_POLL_S)
        _log.info("ops server listening", extra={"url": self.url})

    async def stop(self) -> None:
        """Stop accepting connections, let open requests finish, then return."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self._graceful_timeout_s + 2.0)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
