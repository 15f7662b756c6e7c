"""deploy/k8s: both overlays render, validate against the Kubernetes schemas, and are hardened.

`kubectl kustomize` renders each overlay (no cluster needed); every object is validated with
kubernetes-validate (strict: unknown fields are errors) and checked for what issue 7 promises:
probes, requests/limits and a hardened securityContext on every container, PDBs, HPAs for the
gateway and the relay, deny-all NetworkPolicies, a 3-node NATS cluster running the very files of
deploy/nats, R3 provisioning in prod. Nothing is applied to a cluster here.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
NATS_DIR = REPO_ROOT / "deploy" / "nats"
IN_CI = os.environ.get("CI", "").lower() == "true"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.32.0"

SERVICE_PORTS = {
    "event-gateway": 8080,
    "schema-registry": 8081,
    "outbox-relay": 8082,
    "anomaly-detector": 8083,
    "chaos-agent": 8084,
}
AUTOSCALED = {"event-gateway", "outbox-relay"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
NAMESPACES = {"dev": "backbone-dev", "prod": "backbone"}


def kubectl() -> str:
    found = shutil.which("kubectl") or (
        "/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None
    )
    if found is None:
        message = (
            "kubectl not installed: `make setup` installs it (Debian package kubernetes-client)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def kubernetes_validate() -> ModuleType:
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        message = "kubernetes-validate missing: it belongs to the dev dependency group"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(overlay)))


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def by_base_name(named: dict[str, dict[str, Any]], base: str) -> dict[str, Any]:
    """A generated object (ConfigMap/Secret with kustomize's hash suffix) by its base name."""
    matches = [
        doc for name, doc in named.items() if re.fullmatch(rf"{re.escape(base)}(-\w+)?", name)
    ]
    assert len(matches) == 1, f"{base}: {sorted(named)}"
    return matches[0]


# --- rendering and schema validation -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_part(overlay: str) -> None:
    docs = render(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Namespace",
        "StatefulSet",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Job",
    } <= kinds
    deployments = objects(docs, "Deployment")
    assert set(SERVICE_PORTS) | {"jaeger"} <= set(deployments)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACES[overlay], doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "backbone"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    validator = kubernetes_validate()
    failures = []
    for doc in render(overlay):
        try:
            validator.validate(doc, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error}")
    assert failures == []


def test_schema_validation_rejects_a_broken_object() -> None:
    validator = kubernetes_validate()
    deployment = copy.deepcopy(objects(render("dev"), "Deployment")["event-gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = (
        "/"
    )
    with pytest.raises(validator.ValidationError):
        validator.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- hardening -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_with_resources(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] != 0, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert not spec.get("hostNetwork"), name
        assert not spec.get("hostPID"), name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["runAsNonRoot"] is True, where
            assert security.get("privileged", False) is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert {"cpu", "memory"} <= set(resources["limits"]), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_containers_have_probes(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        if workload["kind"] == "Job":
            continue  # a one-shot's exit status is its health
        for container in workload["spec"]["template"]["spec"]["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{where} lacks {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_probe_livez_and_readyz_on_their_ops_port(overlay: str) -> None:
    docs = render(overlay)
    deployments = objects(docs, "Deployment")
    config_maps = objects(docs, "ConfigMap")
    for service, port in SERVICE_PORTS.items():
        container = pod_spec(deployments[service])["containers"][0]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        config = by_base_name(config_maps, f"{service}-config")["data"]
        assert config["BACKBONE_HTTP__PORT"] == str(port)
        assert config["BACKBONE_HTTP__HOST"] == "0.0.0.0"
        assert config["BACKBONE_NATS__USER"] == service
        assert config["BACKBONE_NATS__SERVERS"] == "nats://nats:4222"
        password = next(e for e in container["env"] if e["name"] == "BACKBONE_NATS__PASSWORD")
        key = password["valueFrom"]["secretKeyRef"]["key"]
        assert key == service.upper().replace("-", "_") + "_NATS_PASSWORD"
        assert pod_spec(deployments[service])["serviceAccountName"] == service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_have_disruption_budgets_and_autoscaling(overlay: str) -> None:
    docs = render(overlay)
    budgets = objects(docs, "PodDisruptionBudget")
    for name in [*SERVICE_PORTS, "nats"]:
        assert budgets[name]["spec"]["selector"]["matchLabels"] == {"app": name}
        assert budgets[name]["spec"]["maxUnavailable"] == 1
    hpas = objects(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == AUTOSCALED
    deployments = objects(docs, "Deployment")
    for name in AUTOSCALED:
        assert hpas[name]["spec"]["scaleTargetRef"]["name"] == name
        # The HPA owns the count; a fixed `replicas` would fight it on every apply.
        assert "replicas" not in deployments[name]["spec"]
    expected = 1 if overlay == "dev" else 2
    for name in set(SERVICE_PORTS) - AUTOSCALED:
        assert deployments[name]["spec"]["replicas"] == expected


# --- NATS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_is_a_three_node_jetstream_cluster_running_the_repository_config(overlay: str) -> None:
    docs = render(overlay)
    nats = objects(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["podManagementPolicy"] == "Parallel"
    assert nats["spec"]["serviceName"] == "nats-headless"
    assert objects(docs, "Service")["nats-headless"]["spec"]["clusterIP"] == "None"
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    container = pod_spec(nats)["containers"][0]
    assert container["command"] == ["nats-server", "--config", "/etc/nats/nats-cluster.conf"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]

    # The ConfigMap carries deploy/nats byte for byte.
    config = by_base_name(objects(docs, "ConfigMap"), "nats-config")["data"]
    for file_name, text in config.items():
        assert text == (NATS_DIR / file_name).read_text(), file_name
    cluster_conf = config["nats-cluster.conf"]
    for ordinal in range(3):
        assert f"nats://nats-{ordinal}.nats-headless:6222" in cluster_conf

    anti_affinity = pod_spec(nats)["affinity"]["podAntiAffinity"]
    required = "requiredDuringSchedulingIgnoredDuringExecution"
    assert (required in anti_affinity) == (overlay == "prod")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_provisioning_job_uses_the_provisioner_and_r3_in_prod(overlay: str) -> None:
    job = objects(render(overlay), "Job")["backbone-provision"]
    container = pod_spec(job)["containers"][0]
    command = container["command"]
    assert command[:2] == ["backbone", "provision"]
    if overlay == "prod":
        assert command[command.index("--replicas") + 1] == "3"
    else:
        assert "--replicas" not in command
    env = {e["name"]: e for e in container["env"]}
    assert env["BACKBONE_NATS__USER"]["value"] == "provisioner"


def test_dev_generates_every_secret_key_the_manifests_and_nats_config_read() -> None:
    docs = render("dev")
    secrets = objects(docs, "Secret")
    nats_users = by_base_name(secrets, "backbone-nats-users")
    keys = set(nats_users.get("data", {}))
    config_vars = set()
    for conf in NATS_DIR.glob("*.conf"):
        config_vars |= set(re.findall(r"\$([A-Z][A-Z0-9_]*_NATS_PASSWORD)", conf.read_text()))
    assert config_vars <= keys
    referenced: set[tuple[str, str]] = set()
    for workload in workloads(docs):
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
    for name, key in referenced:
        assert key in secrets[name]["data"], f"{name} lacks {key}"


def test_prod_ships_no_secrets_and_pins_images_from_a_registry() -> None:
    docs = render("prod")
    assert not objects(docs, "Secret")
    for workload in workloads(docs):
        for container in containers(workload):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{image} has no tag"
            assert not image.endswith((":latest", ":dev")), image


# --- network -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_is_deny_all_plus_the_flows_of_the_design(overlay: str) -> None:
    docs = render(overlay)
    policies = objects(docs, "NetworkPolicy")
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny

    # Only the gateway accepts traffic from anywhere (an ingress rule without `from`).
    open_to_all = [
        name
        for name, policy in policies.items()
        for rule in policy["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_to_all == ["event-gateway-public"]
    assert policies["event-gateway-public"]["spec"]["podSelector"] == {
        "matchLabels": {"app": "event-gateway"}
    }

    # Every Backbone pod is a NATS client (the only way services talk to each other).
    deployments = objects(docs, "Deployment")
    for service in SERVICE_PORTS:
        labels = deployments[service]["spec"]["template"]["metadata"]["labels"]
        assert labels["backbone.io/nats-client"] == "true"
        assert labels.get("backbone.io/postgres-client") == (
            "true" if service == "outbox-relay" else None
        )
    cluster_rule = policies["nats"]["spec"]["ingress"][1]
    assert cluster_rule["from"] == [{"podSelector": {"matchLabels": {"app": "nats"}}}]
    assert cluster_rule["ports"] == [{"port": 6222, "protocol": "TCP"}]


def test_namespaces_enforce_the_restricted_pod_security_standard() -> None:
    for overlay in OVERLAYS:
        namespace = objects(render(overlay), "Namespace")[NAMESPACES[overlay]]
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
