"""VCP-CLIP's settings (SPEC_VCP §14): the one place where its defaults (the paper's) live."""
from __future__ import annotations

from dataclasses import dataclass

from utils import non_negative_float, non_negative_int, positive_int

from ..constants import CLIP_TEMPERATURE, SMOOTHING_SIGMA
from ..settings import at_least, non_empty, positive, setting, setting_problems

TEMPERATURE_INIT = 1 / CLIP_TEMPERATURE  # both temperatures start at ln(1/0.07) (SPEC_VCP §3, §4)
FUSION_ALPHA = 0.2  # a literal in the reference's test.py
SCORE_TOPK = 2000  # pixels averaged per branch map for the image score (SPEC_VCP §7)


def _unit_interval(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"must lie in [0, 1], got {value}"


def _probability_or_off(value: float) -> str | None:
    return None if value < 0 or value <= 1.0 else f"must be a probability in [0, 1] (or negative: never), got {value}"


def _has_state(value: str) -> str | None:
    return None if value.count("{state}") == 1 else f"must hold {{state}} once, got {value!r}"


def _two_words(value) -> str | None:
    return None if len(value) == 2 and all(value) else f"needs a normal and an abnormal word, got {list(value)}"


def _dropout(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else f"must lie in [0, 1), got {value}"


@dataclass
class VCPConfig:
    """Everything that shapes a VCP-CLIP model or its outputs."""

    REFUSED_FLAGS = {"--use_global": "in the reference this flag switched the global context OFF (it was "
                                     "store_false); here the context is on by default and --no_global_context "
                                     "switches it off"}

    image_size: int = setting(518, "input size in pixels (a multiple of the 14 px patch)", type=positive_int,
                              check=at_least(1))
    features_list: tuple[int, ...] = setting(
        (6, 12, 18, 24), "1-based vision layers whose patch features make the maps (used in increasing order; "
                         "each has its own trained linear head, so a checkpoint's layers cannot be changed)",
        type=positive_int, nargs="+", check=non_empty, trained=True)
    prompt_len: int = setting(2, "learnable category vectors r in the unified text prompt", kind="shape",
                              type=positive_int, check=at_least(1))
    deep_prompt_len: int = setting(1, "deep text prompt tokens n per text layer", kind="shape", type=positive_int,
                                   check=at_least(1))
    total_d_layer_len: int | None = setting(
        None, "text layers that get fresh deep prompts: 0 (shallow) or the text blocks minus one (deep; the "
              "reference's 11 for ViT-L/14; none given: deep)", kind="shape", type=non_negative_int)
    use_global: bool = setting(True, "switch Pre-VCP's global image context off (the category vectors alone "
                                     "fill the prompt)", flag="--no_global_context")
    template: str = setting(
        "a photo of a {state}", "ablation: the unified text prompt's template, {state} replaced by a state word; the "
        "category slot follows its last word", kind="recorded", check=_has_state)
    state_words: tuple[str, ...] = setting(("good", "damaged"), "ablation: the normal and the abnormal state word",
                                           kind="recorded", nargs="+", metavar="WORD", check=_two_words)
    post_vcp: bool = setting(True, "ablation: train and test without Post-VCP (only the Pre-VCP branch's map and "
                                   "score; the paper's 'Baseline' has no Post-VCP)", kind="recorded",
                             flag="--no_post_vcp")
    alpha: float = setting(FUSION_ALPHA, "weight of the Pre-VCP map in the fused map", kind="test",
                           type=float, check=_unit_interval)
    sigma: float = setting(SMOOTHING_SIGMA, "sigma of the Gaussian smoothing of the fused map, in pixels (0: none)",
                           kind="test", type=non_negative_float)
    score_topk: int = setting(SCORE_TOPK, "pixels of each branch map averaged into the image score", kind="test",
                              type=positive_int, check=at_least(1))

    def __post_init__(self):
        self.features_list = tuple(int(x) for x in self.features_list)
        self.state_words = tuple(self.state_words)
        problems = setting_problems(self)
        if len(set(self.features_list)) != len(self.features_list):
            problems.append(f"--features_list {list(self.features_list)} repeats a layer (the reference would "
                            "silently drop the repeat and misalign its linear heads)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def templates(self) -> tuple[str, str]:
        """The normal and the abnormal prompt before the category slot (the default: the reference's)."""
        return tuple(self.template.format(state=word) for word in self.state_words)

    @property
    def layers(self) -> tuple[int, ...]:
        """The tapped blocks in the order the reference collects them: increasing."""
        return tuple(sorted(self.features_list))


@dataclass
class VCPTraining:
    """VCP-CLIP's training hyperparameters (SPEC_VCP §6), the paper's defaults (VisA run)."""

    epoch: int = setting(10, "number of epochs", kind="train", type=positive_int)
    batch_size: int = setting(32, "images per optimiser step", kind="train", type=positive_int)
    learning_rate: float = setting(4e-5, "Adam learning rate of everything but the two temperatures (the paper: "
                                         "4e-5 training on VisA, 2e-5 on MVTec AD)", kind="train", type=float,
                                   check=positive)
    temperature_learning_rate: float = setting(0.01, "Adam learning rate of the two temperatures", kind="train",
                                               type=float, check=positive)
    seed: int = setting(333, "seed of initialisation, shuffling, dropout and augmentation", kind="train", type=int)
    dtp_dropout: float = setting(0.1, "dropout on the projected deep text prompts while training (0: off)",
                                 kind="train", type=float, check=_dropout)
    aug_rate: float = setting(0.2, "probability that a training sample becomes a 2x2 mosaic of four anomalous "
                                   "images of its class (negative: never)", kind="train", type=float,
                              check=_probability_or_off)
    albumentations: bool = setting(True, "turn off the photometric/geometric augmentations (albumentations "
                                         "rotations, brightness/contrast, noise, blur)", kind="train",
                                   flag="--no_albumentations")

    def __post_init__(self):
        problems = setting_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def augmentation(self):
        """What the training loader applies (None: nothing, so the frozen features can be cached)."""
        from engine.augment import Augmentation

        augmentation = Augmentation(mosaic_rate=self.aug_rate, albumentations=self.albumentations)
        return augmentation if augmentation.active else None
