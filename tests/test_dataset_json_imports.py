"""generate_dataset_json's modules form no import circle, not even one hidden under
TYPE_CHECKING, and each imports on its own in a fresh interpreter (a circle shows up
only when the first import happens to enter it from the wrong end)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "generate_dataset_json"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")


def package_imports(module: str) -> set[str]:
    """The package modules `module` imports, wherever the import statement sits."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # `from . import layouts`
                found.update(alias.name for alias in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found.update(n.split(".")[1] for n in names if n.startswith("generate_dataset_json."))
    return found & set(MODULES)


def test_no_module_imports_one_that_imports_it_back():
    graph = {module: package_imports(module) - {"__init__"} for module in MODULES}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = [module for module in MODULES if reaches(module, module, {module})]
    assert not circles, f"modules on an import circle: {circles} (graph: {graph})"


def test_layouts_and_registry_share_the_spec_module():
    assert "spec" in package_imports("layouts") and "spec" in package_imports("registry")
    assert "registry" not in package_imports("layouts")


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_in_a_fresh_interpreter(module):
    name = "generate_dataset_json" if module == "__init__" else f"generate_dataset_json.{module}"
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
