"""WinCLIP's settings (SPEC_WINCLIP §8): the one place where its defaults (anomalib 2.7.0's) live."""
from __future__ import annotations

from dataclasses import dataclass

from utils import non_negative_float, positive_int

from ..constants import CLIP_TEMPERATURE
from ..fewshot import MODES
from ..settings import at_least, non_empty, setting, setting_problems

GENERIC_CLASS_NAME = "object"  # anomalib's word for a class it has no name for


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


@dataclass
class WinCLIPConfig:
    """Everything that shapes WinCLIP's outputs (it has no trained tensors)."""

    image_size: int = setting(240, "input size in pixels (anomalib's fixed 240, the ViT-B-16-plus-240 tower's own)",
                              type=positive_int, check=at_least(1))
    scales: tuple[int, ...] = setting(
        (2, 3), "window sizes in patches (stride 1 patch), one window map per size (anomalib's and the paper's "
                "small and mid scales)", type=positive_int, nargs="+", check=non_empty)
    temperature: float = setting(CLIP_TEMPERATURE, "softmax temperature of the image/window-to-text cosine "
                                 "similarities", type=float, check=_positive)
    mode: str = setting("zero_shot", "zero_shot, or few_shot (WinCLIP+; --k_shot / --reference_dir alone also "
                                     "turn it on)", kind="test", choices=MODES)
    sigma: float = setting(0.0, "sigma of a Gaussian smoothing of the maps, in pixels (0: none, as anomalib's "
                                "model)", kind="test", type=non_negative_float)

    def __post_init__(self):
        self.scales = tuple(int(x) for x in self.scales)
        problems = setting_problems(self)
        if self.mode not in MODES:
            problems.append(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if len(set(self.scales)) != len(self.scales):
            problems.append(f"--scales {list(self.scales)} repeats a window size")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class WinCLIPTraining:
    """WinCLIP trains nothing: no hyperparameters (train.py refuses the method)."""
