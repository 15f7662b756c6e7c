"""nats.micro endpoints: one per operation, all in the registry's queue group."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from backbone.schemas import REGISTRY_PREFIX, REGISTRY_QUEUE_GROUP
from schema_registry.service import OPERATIONS, RegistryService

if TYPE_CHECKING:
    from nats.micro.request import Request
    from nats.micro.service import Service

    from backbone.telemetry import Metrics

ERROR_HEADER: Final = "Nats-Service-Error"
ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"


def endpoint_name(operation: str) -> str:
    """Micro endpoint names allow ``[A-Za-z0-9_-]`` only: ``config.get`` -> ``config-get``."""
    return operation.replace(".", "-")


async def add_endpoints(
    service: Service, registry: RegistryService, *, metrics: Metrics | None = None
) -> None:
    """Serve every operation on ``backbone.registry.<operation>`` in the shared queue group."""
    requests = (
        metrics.counter("registry_requests", "Registry requests by outcome.", ("operation", "code"))
        if metrics
        else None
    )
    latency = (
        metrics.histogram("registry_request_seconds", "Registry request time.", ("operation",))
        if metrics
        else None
    )

    for operation in OPERATIONS:

        async def handle(request: Request, operation: str = operation) -> None:
            started = time.perf_counter()
            body, error = await registry.dispatch(operation, request.data)
            if error is None:
                await request.respond(body)
            else:
                # Both the micro convention (headers) and a JSON body with code/message/path.
                await request.respond(
                    body,
                    headers={
                        ERROR_HEADER: error.message.replace("\r", " ").replace("\n", " "),
                        ERROR_CODE_HEADER: str(error.status),
                    },
                )
            if requests is not None and latency is not None:
                requests.labels(operation, "ok" if error is None else error.code).inc()
                latency.labels(operation).observe(time.perf_counter() - started)

        await service.add_endpoint(
            name=endpoint_name(operation),
            subject=f"{REGISTRY_PREFIX}.{operation}",
            handler=handle,
            queue_group=REGISTRY_QUEUE_GROUP,
        )
