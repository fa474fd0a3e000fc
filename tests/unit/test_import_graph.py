"""The import graph keeps its layers apart (issue 12): the core (``scada/``) and the shared
package (``common/``) never import a driver, a simulator or the composition point; the
simulators talk to the server only over the protocols; drivers depend on the core's
interface, never on the simulators or the composition point.

Every import of every .py file counts, including one inside a function (a lazy import is an
arrow all the same) and one under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION = "city_scada"


def imported_packages(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level package of every import in ``package``'s .py files -> the files importing it."""
    found: dict[str, set[str]] = {}
    files = sorted((root / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                names = [package]  # a relative import stays inside its own package
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(root)))
    return found


def arrows(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> dict[str, list[str]]:
    """The forbidden packages ``package`` imports -> the files that import them (empty: none)."""
    graph = imported_packages(package, root)
    return {target: sorted(graph[target]) for target in forbidden if target in graph}


def test_the_reader_sees_every_import_form(tmp_path):
    """The check itself: plain, from, nested-in-a-function and TYPE_CHECKING imports all count."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import drivers.modbus\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from simulators import city\n"
        "def f():\n    from city_scada import REGISTRY\n"
        "from . import b\n"
    )
    assert arrows("pkg", ("drivers", "simulators", COMPOSITION, "pkg"), tmp_path) == {
        "drivers": ["pkg/a.py"],
        "simulators": ["pkg/a.py"],
        COMPOSITION: ["pkg/a.py"],
        "pkg": ["pkg/a.py"],
    }


def test_the_core_imports_no_driver_simulator_or_composition_point():
    assert arrows("scada", ("drivers", "simulators", COMPOSITION)) == {}


def test_common_imports_neither_the_server_nor_its_plug_ins():
    assert arrows("common", ("scada", "drivers", "simulators", COMPOSITION)) == {}


def test_drivers_import_no_simulator_nor_the_composition_point():
    assert arrows("drivers", ("simulators", COMPOSITION)) == {}


def test_simulators_import_neither_the_server_nor_its_drivers():
    assert arrows("simulators", ("scada", "drivers", COMPOSITION)) == {}
