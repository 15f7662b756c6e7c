# syntax=docker/dockerfile:1
# chaos-agent: fault-injection experiments with steady-state checks.
#
# Build from the repository root (the uv workspace), e.g. `make images` or
#   docker build -f services/chaos-agent/Dockerfile -t backbone/chaos-agent:dev .
# Pattern from uv's Docker guide: a builder stage resolves exactly uv.lock for this one workspace
# package (no dev tools, no other service's dependencies) into /app/.venv; the runtime stage gets
# only that virtualenv plus deploy/ (streams.yaml, schemas), and runs as a non-root user.
# The entrypoint is the service's console script — the same command the local stack and the e2e
# tests start natively (`chaos-agent` == `python -m chaos_agent`).

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
COPY --from=uv /uv /uvx /bin/
# Compile bytecode now (the runtime filesystem is read-only), copy instead of hard-linking from the
# cache mount, never download a Python (use the image's), and put the venv at its final path so
# console-script shebangs stay valid in the runtime stage.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=0 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# The whole workspace is needed for `--locked` (every member's pyproject.toml is part of the lock);
# .dockerignore keeps out .git, virtualenvs, tests, benchmarks and local state.
COPY . /src
# --no-editable installs the workspace packages (backbone and chaos-agent) into the venv as
# wheels, so the runtime stage needs no source tree.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package chaos-agent

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# Fixed numeric ids: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 backbone \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin backbone
# Owned by root and not writable by the service user: the code cannot be modified at run time.
COPY --from=builder /app/.venv /app/.venv
# deploy/streams.yaml (BACKBONE_STREAMS_FILE) and deploy/schemas (seed schemas for
# `backbone provision`); .dockerignore leaves out deploy/compose and deploy/k8s.
COPY deploy/ /app/deploy/
WORKDIR /app
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BACKBONE_HTTP__HOST=0.0.0.0 \
    BACKBONE_HTTP__PORT=8084 \
    BACKBONE_STREAMS_FILE=/app/deploy/streams.yaml \
    BACKBONE_TELEMETRY__SERVICE_NAME=chaos-agent
USER 10001:10001
EXPOSE 8084
# No curl in the slim image: the stdlib does the probe. The port follows BACKBONE_HTTP__PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('BACKBONE_HTTP__PORT', '8084'), timeout=2)"]
ENTRYPOINT ["chaos-agent"]
