"""ViP²-CLIP model code: backbone loading, FGP, UTPA, losses, checkpoints."""
from .clip_loader import ClipWeightsError, load_clip
from .config import DEFAULTS, SMOOTHING_SIGMA, ViP2Config
from .vip2clip import Alignment, ImageFeatures, ViP2CLIP

__all__ = ["ClipWeightsError", "load_clip", "DEFAULTS", "SMOOTHING_SIGMA", "ViP2Config", "Alignment", "ImageFeatures", "ViP2CLIP"]
