"""AdaCLIP (ECCV 2024): hybrid static + dynamic learnable prompts in both towers, hybrid semantic fusion."""
from ..registry import Method, register_method
from .config import AdaCLIPConfig, AdaCLIPTraining

METHOD = register_method(Method(name="adaclip", title="AdaCLIP", config=AdaCLIPConfig, training=AdaCLIPTraining,
                                paper="models.adaclip.paper:PAPER", model="models.adaclip.model:AdaCLIP"))
