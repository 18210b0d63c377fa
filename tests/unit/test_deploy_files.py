"""The deployment files, checked without a container engine or a cluster (none here): the
Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, offline), compose.yaml
against the Compose schema (third_party/compose-spec), and every entry point, port, setting,
secret path, probe and topic they name against the code."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from server.events.topics import ALL_TOPICS
from server.repositories.tenants_file import load_tenants
from server.tenancy.directory import TenantDirectory
from tests.support.deploy_files import (
    COMPOSE,
    DOCKERFILE,
    ENTRY_POINTS,
    HEALTH_NAMES,
    KUBERNETES,
    deployments,
    entry_points,
    kubernetes_documents,
    listening_ports,
    settings_documented,
    settings_read,
)
from tests.support.paths import EXAMPLE_TENANTS, REPO_ROOT
from webhook_bridge.app import create_app
from webhook_bridge.tokens import ServiceTokens, SigningKey

#: The oldest Kubernetes the manifests claim (native gRPC probes are GA since 1.27), and the
#: newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
#: Variables the image sets that are not the service's settings.
NOT_SETTINGS = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads((REPO_ROOT / "third_party/compose-spec/compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [error.message for error in validator.iter_errors(document)]


def bridge_get_paths() -> set[str]:
    """The GET routes of the bridge as chat-bridge builds it (web gateway included)."""
    tokens = ServiceTokens(
        key=SigningKey(algorithm="HS256", key="k" * 32), issuer="i", audience="a"
    )
    app = create_app(
        server_target="127.0.0.1:1",
        tenants=TenantDirectory(file_tenants=load_tenants(EXAMPLE_TENANTS), store=None),
        tokens=tokens,
        teams_metadata_url="http://127.0.0.1:1/",
    )
    return {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }


# Kubernetes


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for _file, document in kubernetes_documents():
        if document["kind"] == "ServiceMonitor":
            continue  # a CRD: test_the_service_monitor_scrapes_every_metrics_port
        kubernetes_validate.validate(document, version, strict=True)
        checked += 1
    assert checked >= 10


def test_the_schema_check_catches_a_misspelt_field() -> None:
    [deployment] = [d for _, d in kubernetes_documents() if d["kind"] == "Deployment"][:1]
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


def config_map() -> dict[str, str]:
    [config] = [d for _, d in kubernetes_documents() if d["kind"] == "ConfigMap"]
    data: dict[str, str] = config["data"]
    return data


def test_the_three_processes_run_their_entry_points_with_requests_and_probes() -> None:
    found = deployments()
    assert sorted(found) == sorted(ENTRY_POINTS)
    for name, deployment in found.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == [name]
        assert name in entry_points()
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "livenessProbe" in container
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    env = dict(config_map()) if container.get("envFrom") else {}
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def test_every_setting_named_is_read_by_the_code_and_documented() -> None:
    read, documented = settings_read(), settings_documented()
    named = set(config_map())
    for deployment in deployments().values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            named |= {e["name"] for e in container.get("env", [])}
    for service in compose()["services"].values():
        named |= set(service.get("environment") or {})
    named |= set(re.findall(r"\b(CHAT_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    chat = {n for n in named if not n.startswith("KAFKA_")}
    assert chat - NOT_SETTINGS <= read, sorted(chat - NOT_SETTINGS - read)
    assert chat - NOT_SETTINGS <= documented, sorted(chat - NOT_SETTINGS - documented)


def test_ports_and_probes_are_the_ones_the_processes_serve(tmp_path: Path) -> None:
    bridge_paths = bridge_get_paths()
    for name, deployment in deployments().items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert set(ports.values()) == listening_ports(name, container_env(container), tmp_path)
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            if "grpc" in probe:
                assert probe["grpc"]["port"] == ports["grpc"], (name, kind)
                assert probe["grpc"]["service"] in HEALTH_NAMES, (name, kind)
            else:
                get = probe["httpGet"]
                assert get["port"] in ports, (name, kind)
                if name == "chat-bridge":
                    assert get["path"] in bridge_paths, (name, kind)
                else:
                    assert get["path"] == "/metrics", (name, kind)


def test_files_the_settings_name_come_from_mounted_secrets() -> None:
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        [container] = pod["containers"]
        mounts = {
            m["mountPath"]: secret_volumes[m["name"]]
            for m in container["volumeMounts"]
            if m["name"] in secret_volumes
        }
        env = container_env(container)
        needed = {"CHAT_TENANT_SECRETS_KEY_FILE"}
        if name != "chat-worker":
            needed.add("CHAT_TENANTS_FILE")
        if name == "chat-bridge":
            needed.add("CHAT_BRIDGE_TOKEN_KEY_FILE")
        for variable in sorted(needed):
            directory, _, file = env[variable].rpartition("/")
            assert directory in mounts, (name, variable)
            items = mounts[directory].get("items")
            assert items is None or file in {i["path"] for i in items}, (name, variable)


def test_disruption_budgets_autoscalers_and_the_service_monitor_match_the_deployments() -> None:
    documents = [d for _, d in kubernetes_documents()]
    names = set(deployments())
    budgets = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    assert {
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for b in budgets
    } == names
    scalers = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scalers} == {"chat-server", "chat-bridge"}
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    assert set(services) == names
    [monitor] = [d for d in documents if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    [selected] = monitor["spec"]["selector"]["matchExpressions"]
    assert set(selected["values"]) == names
    scraped = {e["port"] for e in monitor["spec"]["endpoints"]}
    for name, service in services.items():
        # Every process's metrics: a port named metrics, or the bridge's HTTP port.
        port_names = {p["name"] for p in service["spec"]["ports"]}
        assert port_names & scraped, name
        assert service["spec"]["selector"]["app.kubernetes.io/name"] == name


# Compose


def test_the_compose_file_is_valid_against_the_compose_schema() -> None:
    assert compose_errors(compose()) == []
    misspelt = compose()
    misspelt["services"]["chat-server"]["healtcheck"] = {"test": ["CMD", "true"]}
    assert compose_errors(misspelt)


def test_compose_runs_the_entry_points_with_their_ports_and_health_checks(tmp_path: Path) -> None:
    services = compose()["services"]
    for name in ENTRY_POINTS:
        service = services[name]
        assert service["command"] == [name]
        container_ports = {int(p.rpartition(":")[2]) for p in service["ports"]}
        env = {**service["environment"]}
        for path in [v for v in env.values() if v.startswith("/run/secrets/")]:
            assert path.removeprefix("/run/secrets/") in service["secrets"], (name, path)
        assert container_ports == listening_ports(name, env, tmp_path), name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    server_check = services["chat-server"]["healthcheck"]["test"]
    assert server_check[1:4] == ["python", "-m", "server.healthcheck"]
    assert server_check[4].endswith(":8001")
    assert "http://127.0.0.1:8080/healthz" in services["chat-bridge"]["healthcheck"]["test"][-1]
    assert "/healthz" in bridge_get_paths()


def test_compose_runs_a_replica_set_and_creates_every_topic() -> None:
    services = compose()["services"]
    assert "--replSet" in services["mongodb"]["command"]
    assert "replicaSet=rs0" in services["chat-server"]["environment"]["CHAT_MONGODB_URI"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    script = " ".join(services["kafka-topics"]["command"])
    assert set(re.findall(r"\bchat\.[a-z.]+\.v1\b", script)) == set(ALL_TOPICS)
    for name in ENTRY_POINTS:
        depends = services[name]["depends_on"]
        assert depends["kafka-topics"]["condition"] == "service_completed_successfully"


# Dockerfile


def test_the_image_is_multi_stage_non_root_without_embedded_servers() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(stages) >= 2
    final = text.rsplit("\nFROM ", 1)[1]
    [user] = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert user.split(":")[0] not in ("0", "root")
    install = next(line for line in text.splitlines() if "pip install" in line)
    assert "-c constraints.txt" in install
    assert "embedded" not in install
    assert re.search(r"^CMD \[\"chat-server\"\]", final, re.MULTILINE)
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (REPO_ROOT / source).exists(), source
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE)[0].split()}
    assert exposed == {8001, 8080, 9464, 9465}
