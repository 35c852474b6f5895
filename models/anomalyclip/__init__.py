"""AnomalyCLIP (ICLR 2024): object-agnostic normal/abnormal prompts, deep text tokens, DPAM in the vision tower."""
from ..registry import Method, register_method
from .config import AnomalyCLIPConfig, AnomalyCLIPTraining

METHOD = register_method(Method(name="anomalyclip", title="AnomalyCLIP", config=AnomalyCLIPConfig,
                                training=AnomalyCLIPTraining, paper="models.anomalyclip.paper:PAPER",
                                model="models.anomalyclip.model:AnomalyCLIP"))
