"""Provisioning shared by `backbone up` and `backbone provision`: streams, buckets, seed schemas."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from backbone.messaging import apply_streams, load_catalog

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js import JetStreamContext

log = logging.getLogger(__name__)


async def provision(js: JetStreamContext, root: Path, *, replicas: int | None = None) -> list[str]:
    """Apply ``deploy/streams.yaml`` and register ``deploy/schemas``; idempotent."""
    done: list[str] = []
    changes = await apply_streams(
        js, load_catalog(root / "deploy" / "streams.yaml"), replicas=replicas
    )
    done.extend(f"{c.kind} {c.name}: {c.action}" for c in changes)
    schemas_dir = root / "deploy" / "schemas"
    if schemas_dir.is_dir():
        try:
            from backbone.schemas import register_seed_schemas  # noqa: PLC0415
        except ImportError:
            log.warning("schema support not available; seed schemas not registered")
        else:
            registered = await register_seed_schemas(js, schemas_dir)
            done.append(f"schemas: {len(registered)} seed schemas registered")
    return done
