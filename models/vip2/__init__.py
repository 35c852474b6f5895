"""ViP²-CLIP: image-conditioned prompts (ViP-ICA), fine-grained perception (ViP-FGP), unified alignment (UTPA)."""
from ..registry import Method, register_method
from .config import ViP2Config, ViP2Training

METHOD = register_method(Method(name="vip2", title="ViP²-CLIP", config=ViP2Config, training=ViP2Training,
                                paper="models.vip2.paper:PAPER",
                                model="models.vip2.model:ViP2CLIP"))
