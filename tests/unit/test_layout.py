"""The tests' own layout: what they share lives in tests/support, and nothing under tests/
imports a test module or a conftest (a test module imported by another runs its module code
twice, ties the two together, and a conftest's fixtures are pytest's to find, not an import's).

The imports are read with ``ast``, so every form counts: ``import``, ``from ... import`` of a
module or of a submodule, relative imports, imports inside functions or ``TYPE_CHECKING``
blocks, ``importlib.import_module``/``__import__``/``pytest.importorskip`` with a literal name,
and ``pytest_plugins`` entries."""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.name
SUPPORT = TESTS / "support"
#: Calls that import the module named by their first argument.
IMPORTING_CALLS = {"import_module", "__import__", "importorskip"}


def module_of(path: Path, root: Path) -> str:
    """The dotted name of a file under ``root`` (the tests package)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(name: str, level: int, importer: str, is_package: bool) -> str:
    """``name`` (relative by ``level`` dots) as seen from the module ``importer``."""
    if level == 0:
        return name
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - level + 1]
    return ".".join([*base, name] if name else base)


def imported_names(source: str, importer: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) for everything ``source`` imports or may import: for
    ``from X import y`` both X and X.y (y may be a submodule; a function named test_y counts
    too, since pytest would collect it again where it is imported)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node.module or "", node.level, importer, is_package)
            yield node.lineno, module
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (
                called in IMPORTING_CALLS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                name = first.value
                level = len(name) - len(name.lstrip("."))
                yield node.lineno, absolute(name.lstrip("."), level, importer, is_package)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            named = any(isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in targets)
            if named and node.value is not None:
                for value in ast.walk(node.value):
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        yield node.lineno, value.value


def is_test_file(filename: str, patterns: Sequence[str]) -> bool:
    """A conftest, or a module pytest collects tests from."""
    return filename == "conftest.py" or any(fnmatch.fnmatch(filename, p) for p in patterns)


def is_test_module(name: str, root: Path, patterns: Sequence[str]) -> bool:
    """Whether the dotted ``name`` is a test module or a conftest under ``root``; by its name,
    so one that does not exist (yet) counts too."""
    parts = name.split(".")
    if parts[0] != root.name or len(parts) < 2:
        return False
    return is_test_file(parts[-1] + ".py", patterns)


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def offending_imports(root: Path, patterns: Sequence[str]) -> list[str]:
    """Every import, in any module under ``root``, of a test module or a conftest."""
    found = []
    for path in python_files(root):
        importer = module_of(path, root)
        for line, name in imported_names(path.read_text(), importer, path.name == "__init__.py"):
            if is_test_module(name, root, patterns):
                found.append(f"{path.relative_to(root.parent)}:{line} imports {name}")
    return sorted(set(found))


@pytest.fixture
def patterns(pytestconfig: pytest.Config) -> list[str]:
    """The file names pytest collects tests from (python_files), as configured."""
    return list(pytestconfig.getini("python_files"))


def test_no_module_under_tests_imports_a_test_module_or_a_conftest(
    patterns: list[str],
) -> None:
    assert offending_imports(TESTS, patterns) == []

    # And it read the real tree, not an empty one.
    files = python_files(TESTS)
    assert TESTS / "conftest.py" in files
    assert Path(__file__) in files
    assert sum(is_test_file(p.name, patterns) for p in files) > 20


def test_helpers_live_in_tests_support(patterns: list[str]) -> None:
    """Outside tests/support, a module under tests/ is a test module, a conftest or a
    package's __init__."""
    elsewhere = [
        str(p.relative_to(TESTS))
        for p in python_files(TESTS)
        if SUPPORT not in p.parents
        and p.name != "__init__.py"
        and not is_test_file(p.name, patterns)
    ]
    assert elsewhere == []


@pytest.mark.parametrize(
    ("file", "source", "expected"),
    [
        ("integration/test_a.py", "from tests.integration.test_b import x", "test_b"),
        ("integration/test_a.py", "import tests.integration.test_b as b", "test_b"),
        ("integration/test_a.py", "from tests.integration import test_b", "test_b"),
        ("integration/test_a.py", "from tests.integration import conftest", "conftest"),
        ("integration/test_a.py", "from tests.conftest import REPO_ROOT", "conftest"),
        ("integration/test_a.py", "from tests import conftest as root", "conftest"),
        ("integration/test_a.py", "from .test_b import x", "test_b"),
        ("integration/test_a.py", "from . import test_b", "test_b"),
        ("integration/test_a.py", "from ..conftest import x", "conftest"),
        ("integration/test_a.py", "from ..unit.b_test import x", "b_test"),
        ("integration/conftest.py", "from .test_b import x", "test_b"),
        ("integration/conftest.py", "from .conftest_helpers import x", None),
        ("support/bridge.py", "from tests.integration.test_b import x", "test_b"),
        ("support/__init__.py", "from .conftest import x", "conftest"),
        ("unit/test_a.py", "def f():\n    from tests.unit.test_b import x", "test_b"),
        ("unit/test_a.py", "if TYPE_CHECKING:\n    import tests.unit.test_b", "test_b"),
        ("unit/test_a.py", "importlib.import_module('tests.unit.test_b')", "test_b"),
        ("unit/test_a.py", "__import__('tests.conftest')", "conftest"),
        ("conftest.py", "pytest_plugins = ['tests.integration.test_b']", "test_b"),
        ("conftest.py", "pytest_plugins = 'tests.conftest'", "conftest"),
        ("conftest.py", "pytest_plugins = ['tests.support.servers']", None),
        ("unit/test_a.py", "from tests.support.bridge import sample", None),
        ("unit/test_a.py", "from tests.support import waiting", None),
        ("unit/test_a.py", "from server.testing import test_helper", None),
    ],
)
def test_the_check_sees_every_form_of_import(
    tmp_path: Path, patterns: list[str], file: str, source: str, expected: str | None
) -> None:
    root = tmp_path / PACKAGE
    path = root / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source + "\n")

    found = offending_imports(root, patterns)

    if expected is None:
        assert found == []
    else:
        assert len(found) == 1, found
        assert found[0].endswith(f".{expected}"), found
