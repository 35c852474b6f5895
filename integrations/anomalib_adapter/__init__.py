"""Every method of the registry as an anomalib model (anomalib 2.x; `pip install -r requirements-anomalib.txt`).

    from integrations.anomalib_adapter import load_model
    model = load_model("epoch_10.pth", clip_weights="ViT-L-14-336px.pt")   # the method is read from the file
    Engine().test(model, datamodule=Folder(...))
    model = load_model(None, clip_weights=..., method=NAME)   # a training-free method: CLIP weights alone

`ADAPTERS` maps each `--model` name to its `AnomalibModule` subclass, made from the registry
(nothing here names a method). What is adapted and where anomalib's numbers differ from
`test.py`'s: docs/ANOMALIB.md.
"""
try:
    import anomalib  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("integrations.anomalib_adapter needs anomalib: pip install -r requirements-anomalib.txt") \
        from error

from .evaluation import AdapterEvaluator, default_metrics
from .modules import ADAPTERS, RegistryAnomalibModule, RegistryTorchModel, learning_type_of, load_model
from .pil_resize import PILResize

__all__ = ["ADAPTERS", "AdapterEvaluator", "PILResize", "RegistryAnomalibModule", "RegistryTorchModel",
           "default_metrics", "learning_type_of", "load_model"]
