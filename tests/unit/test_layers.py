"""The layers of server/, checked on the imports themselves: services see ports and domain
types, never a driver or a concrete repository; the domain imports nothing of ours above it;
no module imports the composition root but the process's entry points."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO_ROOT

SERVER = REPO_ROOT / "server"
DRIVERS = {"pymongo", "redis", "aiokafka", "motor"}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def offenders(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    """Modules of ``server/<package>`` importing a module under one of ``forbidden``."""
    bad: dict[str, set[str]] = {}
    for path in sorted((SERVER / package).rglob("*.py")):
        hits = {
            module
            for module in imports(path)
            if any(module == f or module.startswith(f + ".") for f in forbidden)
        }
        if hits:
            bad[str(path.relative_to(REPO_ROOT))] = hits
    return bad


def test_services_import_no_driver_and_no_repository() -> None:
    forbidden = DRIVERS | {"server.repositories", "server.api", "server.bootstrap"}
    assert offenders("services", forbidden) == {}


def test_the_domain_imports_nothing_of_ours_but_itself() -> None:
    forbidden = DRIVERS | {
        f"server.{d.name}" for d in SERVER.iterdir() if d.is_dir() and d.name != "domain"
    }
    assert offenders("domain", forbidden) == {}


def test_repositories_import_no_layer_above_them() -> None:
    above = {"server.services", "server.api", "server.interceptors", "server.bootstrap"}
    assert offenders("repositories", above | {"server.relay", "server.worker"}) == {}


def test_only_the_entry_points_import_the_composition_root() -> None:
    importers = {
        str(path.relative_to(REPO_ROOT))
        for path in SERVER.rglob("*.py")
        if {"server.bootstrap", "server.grpc_server"} & imports(path)
    }
    assert importers == {"server/grpc_server.py", "server/main.py"}


def test_the_checks_see_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "example.py"
    module.write_text("from server.repositories.deliveries import MongoDeliveries\nimport redis\n")
    assert imports(module) == {"server.repositories.deliveries", "redis"}
