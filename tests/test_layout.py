"""The repository's shape: the root shows what to run, no source file over 500 lines, no import circle, no arrow from
a package back up to a script, every module importable alone."""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "metric_kernels", "generate_dataset_json", "engine", "deploy", "reporting")
SCRIPTS = {"train", "test", "predict", "export", "demo", "summarize", "calibrate", "reproduce"}
ROOT_MODULES = {"dataset", "metrics", "prompt_ensemble", "utils"}  # the modules the design names at the top level
MAX_LINES = 500


def source_files() -> list[Path]:
    files = [p for p in ROOT.glob("*.py")]
    for package in (*PACKAGES, "benchmarks"):
        files += sorted((ROOT / package).rglob("*.py"))
    return sorted(files)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for p in source_files() if not p.relative_to(ROOT).parts[0] == "benchmarks"}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules a file imports, at any depth of the file (lazy imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_import_circles():
    modules = project_modules()
    known = set(modules)
    graph = {name: imports_of(path, known) for name, path in modules.items()}
    # a package's __init__ importing its own sub-modules is how packages work, not a circle
    graph = {name: {t for t in targets if not (name + ".").startswith(t + ".")} for name, targets in graph.items()}

    def circle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [c for c in (circle_from(name) for name in graph) if c]
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles[:5])


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    # `import test` is the stdlib's package; a __main__ runs its command when imported
    names = sorted(n for n in project_modules() if n != "test" and not n.endswith("__main__"))

    def try_import(name):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        return name, result.returncode, result.stderr.strip().splitlines()[-1:] if result.returncode else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [r for r in pool.map(try_import, names) if r[1]]
    assert not failures, failures


def test_the_root_holds_only_scripts_and_the_named_modules():
    """A newcomer reading `ls` sees what to run; machinery lives in packages named for their concern."""
    found = {p.stem for p in ROOT.glob("*.py")}
    assert found - SCRIPTS - ROOT_MODULES == set(), f"library modules at the root: {sorted(found - SCRIPTS - ROOT_MODULES)}"
    assert SCRIPTS <= found


def test_no_package_or_named_module_imports_a_script():
    modules = project_modules()
    known = set(modules)
    upward = {name: sorted(imports_of(path, known) & SCRIPTS) for name, path in modules.items() if name not in SCRIPTS}
    upward = {name: targets for name, targets in upward.items() if targets}
    assert not upward, f"library code importing scripts: {upward}"
