"""VCP-CLIP: a unified text prompt with deep text prompts, Pre-VCP and Post-VCP visual context (ECCV 2024)."""
from ..registry import Method, register_method
from .config import VCPConfig, VCPTraining

METHOD = register_method(Method(name="vcp", title="VCP-CLIP", config=VCPConfig, training=VCPTraining,
                                paper="models.vcp.paper:PAPER",
                                model="models.vcp.model:VCPCLIP"))
