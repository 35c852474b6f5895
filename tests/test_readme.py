"""The README stays true: its setup commands are the ones CI runs, and every flag of every script is documented."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def _parser(script: str, method: str | None):
    spec = importlib.util.spec_from_file_location(f"readme_{script}", ROOT / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.build_parser(method) if method else module.build_parser()  # demo.py's takes no method


@pytest.mark.parametrize("method", ["vip2", "vcp", "aprilgan"])
@pytest.mark.parametrize("script", ["train", "test", "predict", "export"])
def test_every_flag_is_documented(script, method):
    options = [o for action in _parser(script, method)._actions for o in action.option_strings
               if o.startswith("--") and o != "--help" and action.help != "==SUPPRESS=="]
    missing = [o for o in options if not re.search(rf"`{re.escape(o)}[` ]", README)]
    assert not missing, f"{script}.py --model {method} flags missing from README.md: {missing}"


def test_every_demo_flag_is_documented():
    options = [o for action in _parser("demo", None)._actions for o in action.option_strings
               if o.startswith("--") and o != "--help"]
    missing = [o for o in options if not re.search(rf"`{re.escape(o)}[` ]", README)]
    assert options and not missing, f"demo.py flags missing from README.md: {missing}"


def test_setup_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -r requirements.txt" in README and "-r requirements.txt" in ci
    assert "python -m pytest -q tests" in README and "pytest -q tests" in ci


def test_no_placeholders_left():
    assert not re.search(r"\b[A-Z]+_(SECTION|TODO)\b|TODO", README)
