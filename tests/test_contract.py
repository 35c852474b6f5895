"""The method contract, tested for every registered method: a method joins by registering, and these tests then
cover it with no edit here."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import demo
from engine.outputs import OUTPUT_NAMES, InferenceBatch
from models import create_model, get_method, method_names
from models.registry import Method, contract_problems, register_method

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train.py", "test.py", "predict.py", "export.py", "demo.py", "summarize.py", "calibrate.py")
SHELL_SCRIPTS = ("train.sh", "test.sh", "scripts_common.sh")


def fixture_model(name):
    folder = demo.fixture_folder(name)
    assert folder is not None, f"{name}: every method ships a tiny fixture in tests/fixtures/{name}_tiny"
    settings = demo.settings_from_text(name, demo.fixture_settings(folder))
    model = create_model(name, clip_weights=str(folder / "clip_tiny.npz"), checkpoint=demo.fixture_checkpoint(name, folder),
                         device="cpu", **settings)
    if model.class_conditioned:  # its prompts name the class: a run without class names binds one
        model.bind_class("object")
    return model


@pytest.mark.parametrize("name", method_names())
def test_forward_returns_the_named_outputs_an_export_carries(name):
    model = fixture_model(name)
    images = torch.randint(0, 256, (2, 3, model.image_size, model.image_size), dtype=torch.uint8)
    with torch.inference_mode():
        out = model(images)
    assert isinstance(out, InferenceBatch) and out._fields == OUTPUT_NAMES == ("anomaly_map", "image_score")
    assert out.anomaly_map.shape == (2, model.image_size, model.image_size) and out.image_score.shape == (2,)
    assert out.anomaly_map.dtype == out.image_score.dtype == torch.float32


@pytest.mark.parametrize("name", method_names())
def test_bf16_evaluation_stays_close_to_float32(name):
    """`--precision bf16` (autocast, as engine/inference.py runs it): float32 outputs, finite, within 5% of the
    float32 maps' magnitude (measured on the tiny fixtures: 0.7% to 4%)."""
    from engine.devices import autocast

    model = fixture_model(name)
    images = torch.randint(0, 256, (2, 3, model.image_size, model.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(images)
        with autocast("bf16", torch.device("cpu")):
            low = model(images)
    assert low.anomaly_map.dtype == low.image_score.dtype == torch.float32
    assert torch.isfinite(low.anomaly_map).all() and torch.isfinite(low.image_score).all()
    scale = max(1.0, reference.anomaly_map.abs().max().item())
    assert (low.anomaly_map - reference.anomaly_map).abs().max().item() <= 0.05 * scale
    assert (low.image_score - reference.image_score).abs().max().item() <= 0.05 * scale


@pytest.mark.parametrize("name", method_names())
def test_every_method_has_its_paper_and_protocol(name):
    method = get_method(name)
    assert contract_problems(method) == []
    paper = method.paper_tables()
    assert paper.evaluation and all(row.values for row in paper.rows.values())


def test_the_registry_refuses_a_method_without_its_paper():
    known = get_method(method_names()[0])
    with pytest.raises(ValueError, match="no paper"):
        register_method(Method(name="nopaper", title="No paper", config=known.config, training=known.training,
                               model=known.model, paper=""))
    with pytest.raises(ValueError, match="cannot be loaded"):
        register_method(Method(name="badpaper", title="Bad paper", config=known.config, training=known.training,
                               model=known.model, paper="models.no_such_module:PAPER"))
    assert "nopaper" not in method_names() and "badpaper" not in method_names()


def _code_strings(path: Path) -> list[str]:
    """String constants of a script's code, docstrings left out (their examples may name a method)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("script", SCRIPTS + SHELL_SCRIPTS)
def test_scripts_name_no_method(script):
    """The scripts list the methods from the registry: a new method needs no edit to them."""
    path = ROOT / script
    names = set(method_names())
    if script.endswith(".py"):
        named = [text for text in _code_strings(path) if text in names]
    else:
        code = [line.split("#", 1)[0] for line in path.read_text().splitlines()]
        named = [name for name in names for line in code if re.search(rf"\b{re.escape(name)}\b", line)]
    assert not named, f"{script} names {sorted(set(named))} in code"
