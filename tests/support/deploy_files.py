"""The deployment files (Dockerfile, compose.yaml, deploy/kubernetes) and the facts of the
code they must agree with: the entry points, the environment variables the settings read, the
ports the processes listen on, the health names and HTTP paths they answer."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.api.served import SERVED_SERVICES
from server.health import LIVENESS
from server.settings import Settings
from tests.support.paths import REPO_ROOT
from webhook_bridge.settings import BridgeSettings

KUBERNETES = REPO_ROOT / "deploy" / "kubernetes" / "base"
COMPOSE = REPO_ROOT / "compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
#: The modules that read the environment (docs/settings.md lists what they read).
SETTINGS_MODULES = (
    "server/settings.py",
    "server/workers.py",
    "webhook_bridge/settings.py",
    "webhook_bridge/web/config.py",
)
#: Health names a gRPC probe may ask for: the whole server, liveness, each chat.v1 service.
HEALTH_NAMES = frozenset({"", LIVENESS, *SERVED_SERVICES})
ENTRY_POINTS = ("chat-server", "chat-bridge", "chat-worker")


def entry_points() -> dict[str, str]:
    """The console scripts pyproject.toml installs."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    scripts: dict[str, str] = project["project"]["scripts"]
    return scripts


def settings_read() -> set[str]:
    """Every CHAT_* variable name the settings modules spell out."""
    names: set[str] = set()
    for module in SETTINGS_MODULES:
        for node in ast.walk(ast.parse((REPO_ROOT / module).read_text())):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and re.fullmatch(r"CHAT_[A-Z0-9_]+", node.value):
                names.add(node.value)
    return names


def settings_documented() -> set[str]:
    return set(re.findall(r"`(CHAT_[A-Z0-9_]+)`", (REPO_ROOT / "docs" / "settings.md").read_text()))


def kubernetes_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every resource of the base's kustomization, with the file it is in."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return [
        (name, document)
        for name in kustomization["resources"]
        for document in yaml.safe_load_all((KUBERNETES / name).read_text())
        if document
    ]


def deployments() -> dict[str, dict[str, Any]]:
    """The base's Deployments, by name."""
    return {
        d["metadata"]["name"]: d for _, d in kubernetes_documents() if d["kind"] == "Deployment"
    }


def port_of(address: str | None) -> int:
    assert address is not None, "the address is off"
    return int(address.rpartition(":")[2])


def listening_ports(command: str, env: Mapping[str, str], tmp_path: Path) -> set[int]:
    """The ports a process started with ``command`` and ``env`` listens on, by the process's
    own settings parser (its key files stood in for by a fresh key)."""
    env = dict(env)
    if "CHAT_BRIDGE_TOKEN_KEY_FILE" in env:
        key = tmp_path / "bridge-token.pem"
        key.write_bytes(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        env["CHAT_BRIDGE_TOKEN_KEY_FILE"] = str(key)
    if command == "chat-bridge":
        return {BridgeSettings.from_env(env).port}
    settings = Settings.from_env(env)
    if command == "chat-worker":
        return {port_of(settings.worker.metrics_address)}
    return {port_of(settings.grpc_address), port_of(settings.metrics_address)}
