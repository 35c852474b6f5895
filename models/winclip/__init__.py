"""WinCLIP / WinCLIP+: training-free window-based CLIP anomaly classification and segmentation (CVPR 2023)."""
from ..registry import Method, register_method
from .config import WinCLIPConfig, WinCLIPTraining

METHOD = register_method(Method(name="winclip", title="WinCLIP", config=WinCLIPConfig, training=WinCLIPTraining,
                                paper="models.winclip.paper:PAPER", model="models.winclip.model:WinCLIP",
                                trains=False))
