"""deploy/compose: schema-valid Compose files whose structure keeps the deployment's promises.

No container engine runs here: these tests validate the files (Compose Specification JSON Schema,
vendored in tests/deploy/schemas/, plus the structural rules of issue 7), they do not start them.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
NATS_DIR = REPO_ROOT / "deploy" / "nats"
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
# Imported by name: jsonschema ships no type stubs (types-jsonschema is not a dev dependency).
jsonschema: Any = importlib.import_module("jsonschema")

# The five Backbone services and their fixed operations/API ports (lead's conventions).
SERVICE_PORTS = {
    "event-gateway": 8080,
    "schema-registry": 8081,
    "outbox-relay": 8082,
    "anomaly-detector": 8083,
    "chaos-agent": 8084,
}
ONE_SHOT = "provision"
INFRA_PORTS = {"nats", "postgres", "jaeger", "edge"}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[?-])?(?P<arg>[^}]*)\}")
SECRET_NAME = re.compile(r"(PASSWORD|DSN|SECRET|TOKEN)$")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / name).read_text())
    return data


def validator() -> Any:
    schema = json.loads(SCHEMA_FILE.read_text())
    # The snapshot's `$schema` URI is not one jsonschema recognises; it is draft 2019-09.
    return jsonschema.Draft201909Validator(schema)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator().iter_errors(document)
    ]


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: maps merge, volume lists append, scalars replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return copy.deepcopy(override)


def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR:?error}` interpolation."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in {":?", "?"} and not current:
            raise LookupError(f"{name}: {arg}")
        if op in {":-", "-"} and not current:
            return arg
        return current or ""

    return VARIABLE.sub(substitute, value)


def strings(value: Any) -> list[str]:
    """Every string value in a loaded YAML document (comments are not values)."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return [value] if isinstance(value, str) else []


def variable_uses(name: str) -> list[re.Match[str]]:
    return [match for text in strings(load(name)) for match in VARIABLE.finditer(text)]


def dummy_env() -> dict[str, str]:
    env = {name: value or "p0123abcd" for name, value in env_example().items()}
    env["BACKBONE_TLS_DIR"] = "./tls"
    return env


# --- schema --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["compose.yaml", "compose.tls.yaml"])
def test_compose_file_validates_against_the_compose_spec(name: str) -> None:
    assert schema_errors(load(name)) == []


def test_tls_override_merged_and_interpolated_still_validates() -> None:
    merged = merge(load("compose.yaml"), load("compose.tls.yaml"))
    assert schema_errors(merged) == []
    assert schema_errors(interpolate(merged, dummy_env())) == []
    assert merged["services"]["nats"]["command"][-1] == "/etc/nats/nats-server-tls.conf"
    for service in [*SERVICE_PORTS, ONE_SHOT]:
        env = merged["services"][service]["environment"]
        assert env["BACKBONE_NATS__SERVERS"].startswith("tls://")
        assert env["BACKBONE_NATS__TLS__CA_FILE"] == "/etc/backbone/tls/ca.crt"


def test_schema_check_is_not_vacuous() -> None:
    broken = load("compose.yaml")
    broken["services"]["event-gateway"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["nats"]["depends_on"] = {"postgres": {"condition": "when_ready"}}
    assert len(schema_errors(broken)) >= 2


# --- secrets and variables -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["compose.yaml", "compose.tls.yaml"])
def test_every_variable_is_documented_in_env_example(name: str) -> None:
    documented = set(env_example())
    assert {match["name"] for match in variable_uses(name)} <= documented


def test_secrets_are_required_variables_never_literals_or_defaults() -> None:
    for match in variable_uses("compose.yaml") + variable_uses("compose.tls.yaml"):
        if SECRET_NAME.search(match["name"]):
            assert match["op"] == ":?", f"{match[0]} must fail when unset or empty"
    for service_name, service in load("compose.yaml")["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert "${" in str(value), f"{service_name}.{key} is a literal secret"
                assert ":?" in str(value), f"{service_name}.{key} must be required (:?)"
    # Every example secret is empty: nothing ships with a usable default password.
    for key, value in env_example().items():
        if SECRET_NAME.search(key):
            assert value == "", key


def test_missing_secret_stops_interpolation() -> None:
    env = dummy_env()
    del env["OUTBOX_RELAY_NATS_PASSWORD"]
    with pytest.raises(LookupError, match="OUTBOX_RELAY_NATS_PASSWORD"):
        interpolate(load("compose.yaml"), env)


def test_nats_container_gets_every_password_its_config_reads() -> None:
    config_vars = set()
    for conf in NATS_DIR.glob("*.conf"):
        config_vars |= set(re.findall(r"\$([A-Z][A-Z0-9_]*_NATS_PASSWORD)", conf.read_text()))
    nats_env = load("compose.yaml")["services"]["nats"]["environment"]
    assert config_vars
    assert config_vars <= set(nats_env)


def test_each_service_connects_as_its_own_nats_user() -> None:
    users_conf = (NATS_DIR / "users.conf").read_text()
    users = set(re.findall(r"^\s*user: ([a-z-]+)$", users_conf, flags=re.MULTILINE))
    services = load("compose.yaml")["services"]
    for name in SERVICE_PORTS:
        env = services[name]["environment"]
        assert env["BACKBONE_NATS__USER"] == name
        expected = "${" + name.upper().replace("-", "_") + "_NATS_PASSWORD:?"
        assert env["BACKBONE_NATS__PASSWORD"].startswith(expected)
        assert name in users
    assert services[ONE_SHOT]["environment"]["BACKBONE_NATS__USER"] == "provisioner"


# --- structure -----------------------------------------------------------------------------------


def test_every_long_running_container_has_a_healthcheck() -> None:
    for name, service in load("compose.yaml")["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name == ONE_SHOT:
            assert check == {"disable": True}
            assert service["restart"] == "no"
            continue
        assert not check.get("disable"), name
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name}.healthcheck.{key}"


def test_services_wait_for_healthy_nats_and_finished_provisioning() -> None:
    services = load("compose.yaml")["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert services[dependency]["healthcheck"].get("disable") is not True
    for name in SERVICE_PORTS:
        depends = services[name]["depends_on"]
        assert depends["nats"] == {"condition": "service_healthy"}, name
        assert depends[ONE_SHOT] == {"condition": "service_completed_successfully"}, name
    assert services["outbox-relay"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services[ONE_SHOT]["depends_on"] == {"nats": {"condition": "service_healthy"}}


def test_scalable_services_have_no_fixed_names_or_host_ports() -> None:
    services = load("compose.yaml")["services"]
    for name in SERVICE_PORTS:
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], name
        assert "scale" not in services[name], name
    for name, service in services.items():
        assert "container_name" not in service, name
        for port in service.get("ports", []):
            assert name in INFRA_PORTS, f"{name} publishes a host port"
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_services_are_built_from_the_repo_root_with_their_dockerfile() -> None:
    services = load("compose.yaml")["services"]
    for name, port in SERVICE_PORTS.items():
        service = services[name]
        assert (COMPOSE_DIR / service["build"]["context"]).resolve() == REPO_ROOT
        assert service["build"]["dockerfile"] == f"services/{name}/Dockerfile"
        assert service["image"].startswith(f"backbone/{name}:")
        env = service["environment"]
        assert env["BACKBONE_HTTP__PORT"] == str(port)
        assert env["BACKBONE_HTTP__HOST"] == "0.0.0.0"
        assert env["BACKBONE_NATS__SERVERS"] == "nats://nats:4222"
        assert f"http://127.0.0.1:{port}/livez" in " ".join(service["healthcheck"]["test"])
    provision = services[ONE_SHOT]
    assert provision["entrypoint"][:2] == ["backbone", "provision"]


def test_service_containers_are_hardened() -> None:
    services = load("compose.yaml")["services"]
    for name in [*SERVICE_PORTS, ONE_SHOT]:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "privileged" not in service, name


def test_nats_runs_the_repository_config_with_a_persistent_store() -> None:
    nats = load("compose.yaml")["services"]["nats"]
    assert "../nats:/etc/nats:ro" in nats["volumes"]
    assert any(volume.endswith(":/data") for volume in nats["volumes"])
    assert nats["command"][-1] == "/etc/nats/nats-server.conf"
    assert "js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])
    store = re.search(r'store_dir: "([^"]+)"', (NATS_DIR / "nats-server.conf").read_text())
    assert store is not None
    assert store[1].startswith("/data/")
