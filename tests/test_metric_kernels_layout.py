"""The layout promised for metrics.py and metric_kernels/: small files, no import circle,
each module importable on its own, and a command line that starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metric_kernels"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
MAX_LINES = 500


def _imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved inside the package);
    with `top_level_only`, only those imported when the module itself is imported."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add(f"metric_kernels.{node.module}" if node.module else "metric_kernels")
            else:
                names.add(node.module)
    return names


def test_files_stay_small():
    for path in [ROOT / "metrics.py", *PACKAGE.glob("*.py")]:
        n_lines = len(path.read_text().splitlines())
        assert n_lines <= MAX_LINES, f"{path.name}: {n_lines} lines"


def test_the_package_never_imports_metrics_and_has_no_circle():
    graph = {}
    for name in MODULES:
        imported = _imported_modules(PACKAGE / f"{name}.py")
        assert "metrics" not in imported, f"metric_kernels/{name}.py imports metrics"
        assert "torch" not in _imported_modules(PACKAGE / f"{name}.py", top_level_only=True), \
            f"metric_kernels/{name}.py imports torch at import time"
        graph[name] = {module.split(".", 1)[1] for module in imported
                       if module.startswith("metric_kernels.")}
    done, in_progress = set(), []

    def visit(name):
        assert name not in in_progress, f"import circle: {' -> '.join(in_progress + [name])}"
        if name in done:
            return
        in_progress.append(name)
        for dependency in graph[name]:
            visit(dependency)
        in_progress.pop()
        done.add(name)

    for name in MODULES:
        visit(name)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["metrics"] + [f"metric_kernels.{name}" for name in MODULES])
def test_each_module_imports_on_its_own_without_torch(module):
    code = (f"import sys, {module}\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
