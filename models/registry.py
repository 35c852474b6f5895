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
    paper: str = ""  # "package.module:NAME" of its `models.paper.Paper` (tables, protocol)

    def model_class(self):
        return _load(self.model)

    def paper_tables(self):
        return _load(self.paper) if self.paper else None


def _load(reference: str):
    module_name, _, name = reference.partition(":")
    return getattr(importlib.import_module(module_name), name)


_METHODS: dict[str, Method] = {}
_discovered = False


def register_method(method: Method) -> Method:
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"two methods registered as {method.name!r}")
    _METHODS[method.name] = method
    return method


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
