"""Every method's model, built through one factory: `create_model(name, clip_weights=..., checkpoint=...)`.

Methods register themselves (`models/registry.py`); importing this package imports no
torch, so scripts can build their `--help` from the registry in a fraction of a second.
"""
from .errors import CheckpointError, ClipWeightsError
from .factory import create_model, resolve_config
from .registry import DEFAULT_METHOD, Method, get_method, method_names, register_method

__all__ = ["CheckpointError", "ClipWeightsError", "DEFAULT_METHOD", "Method", "create_model", "get_method",
           "method_names", "register_method", "resolve_config"]
