"""The README's layout table is a newcomer's map: every path it names exists, and every package
under server/ is on it."""

from __future__ import annotations

import re

from tests.support.paths import REPO_ROOT


def layout_paths() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_every_path_on_the_map_exists() -> None:
    paths = layout_paths()
    assert len(paths) > 10
    assert [p for p in paths if not (REPO_ROOT / p).exists()] == []


def test_every_server_package_is_on_the_map() -> None:
    listed = {p.rstrip("/") for p in layout_paths()}
    packages = {
        f"server/{d.name}"
        for d in (REPO_ROOT / "server").iterdir()
        if d.is_dir() and (d / "__init__.py").exists()
    }
    assert packages - listed == set()
