"""services/*/Dockerfile: parsed and checked against the image conventions (no engine here).

Each Dockerfile is a uv multi-stage build from the repository root: `uv sync --locked --no-dev
--no-editable --package <svc>` in a builder, a final stage that copies only the virtualenv (and
deploy/), a numeric non-root USER, a stdlib HEALTHCHECK on /livez and the service's console script
as ENTRYPOINT. For services whose package exists, uv itself confirms (offline dry run) that the
build's sync command resolves from uv.lock.

Dockerfiles of services whose package has not landed yet are staged in
deploy/compose/pending-dockerfiles/<svc>.Dockerfile (a directory under services/ without a
pyproject.toml would break the uv workspace) and get the same checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PENDING_DIR = REPO_ROOT / "deploy" / "compose" / "pending-dockerfiles"
SERVICE_PORTS = {
    "event-gateway": 8080,
    "schema-registry": 8081,
    "outbox-relay": 8082,
    "anomaly-detector": 8083,
    "chaos-agent": 8084,
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    preamble: list[Instruction] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(arguments.split()))
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name, ()))
        elif stages:
            last = stages[-1]
            stages[-1] = Stage(last.base, last.name, (*last.instructions, instruction))
        else:
            preamble.append(instruction)  # ARG before the first FROM
    return stages


def package_exists(service: str) -> bool:
    return (REPO_ROOT / "services" / service / "pyproject.toml").is_file()


def dockerfile_for(service: str) -> Path:
    final = REPO_ROOT / "services" / service / "Dockerfile"
    if package_exists(service):
        assert final.is_file(), (
            f"services/{service} exists: move {PENDING_DIR.name}/{service}.Dockerfile to {final}"
        )
        return final
    staged = PENDING_DIR / f"{service}.Dockerfile"
    assert staged.is_file(), f"no Dockerfile for {service}"
    return staged


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_dockerfile_is_a_locked_uv_multistage_build_of_one_package(service: str) -> None:
    stages = parse_dockerfile(dockerfile_for(service).read_text())
    assert len(stages) >= 2, "multi-stage build expected"
    builder_runs = " ".join(run for stage in stages[:-1] for run in stage.all("RUN"))
    sync = re.search(r"uv sync ([^&;]*)", builder_runs)
    assert sync is not None, "the builder must run `uv sync`"
    flags = sync[1].split()
    for flag in ("--locked", "--no-dev", "--no-editable"):
        assert flag in flags, flag
    assert flags[flags.index("--package") + 1] == service
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in " ".join(
        env for stage in stages[:-1] for env in stage.all("ENV")
    )


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_final_stage_holds_only_the_venv_and_runs_as_non_root(service: str) -> None:
    final = parse_dockerfile(dockerfile_for(service).read_text())[-1]
    assert final.base.startswith("python:")
    copies = final.all("COPY")
    assert any(c.startswith("--from=builder") and "/app/.venv" in c for c in copies), copies
    for copy in copies:
        if not copy.startswith("--from="):
            source = copy.split()[0]
            assert source.startswith("deploy"), f"final stage copies {source} from the context"
    assert not final.all("ADD")
    users = final.all("USER")
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric USER, so Kubernetes runAsNonRoot can verify it"
    assert int(uid) != 0


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_image_healthcheck_entrypoint_and_port_follow_the_conventions(service: str) -> None:
    final = parse_dockerfile(dockerfile_for(service).read_text())[-1]
    port = SERVICE_PORTS[service]
    healthchecks = final.all("HEALTHCHECK")
    assert len(healthchecks) == 1
    check = healthchecks[0]
    assert "CMD" in check
    assert "urllib.request" in check
    assert "http://127.0.0.1:" in check
    assert "/livez" in check
    assert "BACKBONE_HTTP__PORT" in check
    assert "curl" not in check
    assert json.loads(final.all("ENTRYPOINT")[-1]) == [service]
    assert final.all("EXPOSE") == [str(port)]
    env = " ".join(final.all("ENV"))
    assert f"BACKBONE_HTTP__PORT={port}" in env
    assert "BACKBONE_HTTP__HOST=0.0.0.0" in env
    assert "BACKBONE_STREAMS_FILE=/app/deploy/streams.yaml" in env
    assert "/app/.venv/bin" in env


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_entrypoint_is_the_packages_console_script(service: str) -> None:
    if not package_exists(service):
        pytest.skip(f"services/{service} has not landed yet (Dockerfile staged)")
    pyproject = tomllib.loads((REPO_ROOT / "services" / service / "pyproject.toml").read_text())
    module = service.replace("-", "_")
    assert pyproject["project"]["name"] == service
    target = pyproject["project"]["scripts"][service]
    # `<svc>` and `python -m <svc_snake>` run the same function.
    assert target.startswith(f"{module}.__main__:"), target
    assert (REPO_ROOT / "services" / service / "src" / module / "__main__.py").is_file()


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_build_sync_command_resolves_from_the_lock(service: str, tmp_path: Path) -> None:
    if not package_exists(service):
        pytest.skip(f"services/{service} has not landed yet (not in uv.lock)")
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not on PATH")
    env = os.environ | {"UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"), "UV_OFFLINE": "1"}
    result = subprocess.run(
        [uv, "sync", "--locked", "--no-dev", "--no-editable", "--package", service, "--dry-run"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "venv").exists()
    # Only runtime dependencies: no test or lint tools in the image.
    for dev_tool in ("pytest", "mypy", "ruff", "hypothesis"):
        assert f" {dev_tool}==" not in result.stderr


def test_dockerignore_keeps_secrets_and_local_state_out_but_the_workspace_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in ("**/.git", "**/.venv", "**/.env", ".backbone", "**/tests", "bench"):
        assert required in patterns, required
    # What `uv sync --locked` and the runtime stage need must stay in the context.
    for needed in (
        "uv.lock",
        "pyproject.toml",
        "libs",
        "services",
        "deploy",
        "deploy/streams.yaml",
    ):
        assert needed not in patterns, needed
        assert f"{needed}/**" not in patterns, needed
