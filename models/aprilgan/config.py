"""APRIL-GAN's settings (SPEC_APRILGAN §9): the one place where its defaults (the released scripts') live."""
from __future__ import annotations

from dataclasses import dataclass

from utils import non_negative_float, positive_int

from ..fewshot import MODES
from ..settings import at_least, non_empty, setting, setting_problems

LOGIT_SCALE = 100.0  # a literal in the reference (not CLIP's learned logit scale)


def _probability_or_off(value: float) -> str | None:
    return None if value < 0 or value <= 1.0 else f"must be a probability in [0, 1] (or negative: never), got {value}"


def _no_repeats(config, name: str, problems: list[str]) -> None:
    layers = getattr(config, name)
    if len(set(layers)) != len(layers):
        problems.append(f"--{name} {list(layers)} repeats a layer (the reference would silently drop the repeat "
                        "and misalign its linear layers)")


@dataclass
class AprilGANConfig:
    """Everything that shapes an APRIL-GAN model or its outputs."""

    image_size: int = setting(518, "input size in pixels (a multiple of the 14 px patch)", type=positive_int,
                              check=at_least(1))
    features_list: tuple[int, ...] = setting(
        (6, 12, 18, 24), "1-based vision layers whose patch tokens the linear layers map (used in increasing "
                         "order; one linear layer each)", type=positive_int, nargs="+", check=non_empty)
    mode: str = setting("zero_shot", "zero_shot, or few_shot: add the distance to normal reference images' "
                                     "patch features (--k_shot / --reference_dir) to the map", kind="test",
                        choices=MODES)
    few_shot_features: tuple[int, ...] = setting(
        (6, 12, 18, 24), "1-based vision layers whose raw patch tokens the few-shot memory compares",
        kind="test", type=positive_int, nargs="+", check=non_empty)
    sigma: float = setting(0.0, "sigma of a Gaussian smoothing of the maps, in pixels (0: none, as the "
                                "reference)", kind="test", type=non_negative_float)

    def __post_init__(self):
        self.features_list = tuple(int(x) for x in self.features_list)
        self.few_shot_features = tuple(int(x) for x in self.few_shot_features)
        problems = setting_problems(self)
        if self.mode not in MODES:
            problems.append(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _no_repeats(self, "features_list", problems)
        _no_repeats(self, "few_shot_features", problems)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def layers(self) -> tuple[int, ...]:
        """The tapped blocks in the order the reference collects them: increasing."""
        return tuple(sorted(self.features_list))

    @property
    def memory_layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.few_shot_features))


@dataclass
class AprilGANTraining:
    """APRIL-GAN's training hyperparameters (SPEC_APRILGAN §6): the released train.sh's VisA run."""

    epoch: int = setting(15, "number of epochs (the released train.sh: 15 on VisA, 3 on MVTec AD)", kind="train",
                         type=positive_int)
    batch_size: int = setting(8, "images per optimiser step", kind="train", type=positive_int)
    learning_rate: float = setting(1e-3, "Adam learning rate (betas 0.5, 0.999)", kind="train", type=float)
    seed: int = setting(111, "seed of initialisation, shuffling and the mosaic", kind="train", type=int)
    aug_rate: float = setting(-1.0, "probability that a training sample becomes a 2x2 mosaic of four images of "
                                    "its class, each of a random defect type (normal included) (the released "
                                    "train.sh: 0.2 on MVTec AD; the VisA loader has none; negative: never)",
                              kind="train", type=float, check=_probability_or_off)

    def __post_init__(self):
        problems = setting_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def augmentation(self):
        """The mosaic only (no photometric augmentation); None when off, so the frozen features can be cached."""
        from engine.augment import Augmentation

        augmentation = Augmentation(mosaic_rate=self.aug_rate, albumentations=False, mosaic_pool="any_defect_type")
        return augmentation if augmentation.active else None
