"""The check the library contract tests share: outside the one module allowed to, nothing in a
package reaches into the library's internals.

A contract test (tests/unit/test_*_private_contract.py) proves that the one module behind which a
library's internals sit still matches the installed release; this proves the rest of the package
goes through that module, so that the contract test covers every use.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path


def internal_uses(
    package: Path,
    allowed: str,
    library: str,
    *,
    public: Collection[str] = (),
    names: Collection[str] = (),
) -> list[str]:
    """Each place in ``package`` (subpackages too), outside ``allowed`` (a module file or a package
    directory, relative to ``package``), that imports a submodule of ``library`` (``library.x``;
    the top level itself and the submodules listed in ``public`` are public) or names one of
    ``names``, as an attribute or a definition.
    Places read ``path:line what``, the path relative to ``package``'s parent."""
    found = []
    exempt = package / allowed
    for path in sorted(package.rglob("*.py")):
        if path == exempt or exempt in path.parents:
            continue
        where = path.relative_to(package.parent)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and _internal(node.module or "", library, public):
                found.append(f"{where}:{node.lineno} from {node.module} import ...")
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}:{node.lineno} import {a.name}" for a in node.names if _internal(a.name, library, public)
                ]
            elif isinstance(node, ast.Attribute) and node.attr in names:
                found.append(f"{where}:{node.lineno} .{node.attr}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
                found.append(f"{where}:{node.lineno} def {node.name}")
    return found


def _internal(module: str, library: str, public: Collection[str]) -> bool:
    """``module`` is a submodule of ``library`` outside the ``public`` ones (and their own submodules)."""
    if not module.startswith(library + "."):
        return False
    return not any(module == p or module.startswith(p + ".") for p in public)
