"""The README and the pages under docs/ stay true: the setup commands are the ones CI runs, every flag of every script
is documented on its page, every relative link resolves, every file they name exists, and the README stays short."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from models import get_method, method_names
from conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
README_MAX_LINES = 330
# Where each script's every flag is documented (the README names the most-used ones and links the page).
FLAG_PAGES = {"train": "docs/TRAINING.md", "test": "docs/EVALUATION.md", "predict": "docs/PREDICT.md",
              "export": "docs/DEPLOY.md", "demo": "docs/DEPLOY.md"}
# Files the pages name that belong to the references, not to this repository.
EXTERNAL_FILES = {"make_meta.py"}


def _parser(script: str, method: str | None):
    spec = importlib.util.spec_from_file_location(f"readme_{script}", ROOT / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.build_parser(method) if method else module.build_parser()  # demo.py's takes no method


def _undocumented(options: list[str], text: str) -> list[str]:
    return [o for o in options if not re.search(rf"`{re.escape(o)}[` ]", text)]


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("script", ["train", "test", "predict", "export"])
def test_every_flag_is_documented(script, method):
    if script == "train" and not get_method(method).trains:  # a training-free method has no train.py flags
        import train

        with pytest.raises(ValueError, match="nothing to train"):
            train.parse_args(["--model", method, "--train_data_path", "data"])
        return
    options = [o for action in _parser(script, method)._actions for o in action.option_strings
               if o.startswith("--") and o != "--help" and action.help != "==SUPPRESS=="]
    page = FLAG_PAGES[script]
    missing = _undocumented(options, (ROOT / page).read_text())
    assert not missing, f"{script}.py --model {method} flags missing from {page}: {missing}"
    assert f"({page})" in README, f"README.md does not link {page}, where {script}.py's flags are"


def test_every_demo_flag_is_documented():
    options = [o for action in _parser("demo", None)._actions for o in action.option_strings
               if o.startswith("--") and o != "--help"]
    page = FLAG_PAGES["demo"]
    missing = _undocumented(options, (ROOT / page).read_text())
    assert options and not missing, f"demo.py flags missing from {page}: {missing}"


def test_setup_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -r requirements.txt" in README and "-r requirements.txt" in ci
    assert "python -m pytest -q tests" in README and "pytest -q tests" in ci
    quick = 'python -m pytest -q -m "not slow" tests'
    assert quick in README and "slow:" in (ROOT / "pytest.ini").read_text()


def test_no_placeholders_left():
    for page in PAGES:
        assert not re.search(r"\b[A-Z]+_(SECTION|TODO)\b|TODO", page.read_text()), page.name


def test_readme_stays_a_newcomers_page():
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move depth into docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)}


def _links(page) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target})")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"{page.name}: broken links {broken}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *(p for p in DOCS if not p.name.startswith("SPEC"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_named_file_exists(page):
    """Paths in backticks (`engine/devices.py`, `test.sh`) name files that exist: moved modules are followed."""
    tracked = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if ".git" not in p.parts}
    names = {path.rpartition("/")[2] for path in tracked}
    stale = []
    for token in re.findall(r"`([\w./-]+\.(?:py|sh))`", page.read_text()):
        if token in EXTERNAL_FILES or "{" in token:
            continue
        if "/" in token:
            if token not in tracked:
                stale.append(token)
        elif token not in names:
            stale.append(token)
    assert not stale, f"{page.name} names files that do not exist: {sorted(set(stale))}"
