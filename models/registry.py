"""The method registry: each method (ViP²-CLIP, VCP-CLIP, ...) is one row, keyed by its `--model` name.

A method is a sub-package of `models/` whose `__init__.py` calls `register_method`; the
package imports every sub-package on first use, so a new method plugs in without any edit
to the scripts (timm's registry is the model followed). A row holds only torch-free
facts (names and settings dataclasses), so that `--help` builds every flag without
importing torch; the model class is imported when a model is built.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

DEFAULT_METHOD = "vip2"


@dataclass(frozen=True)
class Method:
    name: str  # the `--model` value
    title: str  # the paper's name, for logs and tables
    config: type  # model settings dataclass (models/settings.py)
    training: type  # training hyperparameters dataclass
    model: str  # "package.module:Class" of its AnomalyModel subclass, imported lazily
    paper: str  # "package.module:NAME" of its `models.paper.Paper` (tables, protocol): required, torch-free
    trains: bool = True  # False: training-free (WinCLIP): train.py refuses it, the other scripts take no checkpoint

    def model_class(self):
        return _load(self.model)

    def paper_tables(self):
        return _load(self.paper)


def _load(reference: str):
    module_name, _, name = reference.partition(":")
    return getattr(importlib.import_module(module_name), name)


_METHODS: dict[str, Method] = {}
_discovered = False


def register_method(method: Method) -> Method:
    """Add a method; refused without its paper's tables and protocol, which summarize.py, train.sh and test.sh
    read (a method is only comparable with what its paper reports)."""
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"two methods registered as {method.name!r}")
    problems = contract_problems(method)
    if problems:
        raise ValueError(f"method {method.name!r} cannot be registered: " + "; ".join(problems))
    _METHODS[method.name] = method
    return method


def contract_problems(method: Method) -> list[str]:
    """What a method's registry row lacks: its paper (tables with rows, an evaluation protocol)."""
    if not method.paper:
        return ["no paper (Method.paper: 'package.module:NAME' of a models.paper.Paper)"]
    try:
        paper = _load(method.paper)
    except (ImportError, AttributeError) as error:
        return [f"its paper {method.paper} cannot be loaded ({error})"]
    if not all(hasattr(paper, field) for field in ("rows", "tables", "training", "evaluation")):
        return [f"{method.paper} is a {type(paper).__name__}, not a models.paper.Paper"]
    problems = []
    if not paper.rows or not paper.tables:
        problems.append(f"{method.paper} declares no table rows")
    if not paper.evaluation:
        problems.append(f"{method.paper} declares no evaluation protocol (dataset -> training set)")
    unknown = sorted({row.table for row in paper.rows.values()} - set(paper.tables))
    if unknown:
        problems.append(f"{method.paper} has rows in undeclared tables {unknown}")
    return problems


def _discover() -> None:
    """Import every method sub-package of `models/` once (each registers itself)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            importlib.import_module(f"{__package__}.{info.name}")


def method_names() -> tuple[str, ...]:
    _discover()
    return tuple(sorted(_METHODS, key=lambda name: (name != DEFAULT_METHOD, name)))


def get_method(name: str) -> Method:
    _discover()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(method_names())} (--model)") from None
