"""ViP²-CLIP's settings: the one place where its defaults (the released scripts') live."""
from __future__ import annotations

from dataclasses import dataclass

from utils import non_negative_float, non_negative_int, positive_int

from ..constants import SMOOTHING_SIGMA  # test-time Gaussian on the anomaly maps (SPEC §6)
from ..settings import at_least, non_empty, positive, setting, setting_problems

# Constants of the method (SPEC §3, §4): not flags, the released checkpoints were trained with them.


@dataclass
class ViP2Config:
    """Everything that shapes a ViP²-CLIP model or its outputs."""

    n_ctx: int = setting(7, "learnable context tokens per prompt", kind="shape", type=positive_int,
                       check=at_least(1))
    n_cls: int = setting(3, "image-conditioned tokens per prompt", kind="shape", type=positive_int,
                       check=at_least(1))
    topk: int = setting(50, "patches pooled per layer for the image logit", type=positive_int,
                       check=at_least(1))
    features_list: tuple[int, ...] = setting((6, 12, 18, 24), "1-based vision layers whose patches are aligned",
                                             type=positive_int, nargs="+",
                                             check=non_empty)
    image_size: int = setting(518, "input size in pixels (a multiple of the 14 px patch)",
                              type=positive_int, check=at_least(1))
    fix_quirks: bool = setting(False, "use the paper's evident intent instead of the reference's quirks "
                                      "(docs/QUIRKS.md; recorded in the checkpoint)", kind="recorded")
    fgp: bool = setting(True, "ablation: train and test without ViP-FGP (UTPA aligns the patches with the prompts' "
                              "text embeddings as they are)", kind="recorded", flag="--no_fgp")
    feature_map_layer: tuple[int, ...] | None = setting(
        None, "indices into --features_list averaged into the test-time anomaly map (none given: all)",
        type=non_negative_int, nargs="+")
    sigma: float = setting(SMOOTHING_SIGMA, "sigma of the Gaussian smoothing of the maps, in pixels (0: none)",
                           kind="test", type=non_negative_float)

    def __post_init__(self):
        self.features_list = tuple(int(x) for x in self.features_list)
        if self.feature_map_layer is not None:
            self.feature_map_layer = tuple(int(x) for x in self.feature_map_layer)
        problems = setting_problems(self)
        if any(i < 0 or i >= len(self.features_list) for i in self.feature_map_layer or ()):
            problems.append(
                f"--feature_map_layer {list(self.feature_map_layer)} must index into "
                f"--features_list {list(self.features_list)} (0 to {len(self.features_list) - 1})")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def map_layers(self) -> tuple[int, ...]:
        """Positions in `features_list` whose maps are averaged into the test-time anomaly map."""
        return self.feature_map_layer if self.feature_map_layer is not None else tuple(range(len(self.features_list)))


@dataclass
class ViP2Training:
    """ViP²-CLIP's training hyperparameters (SPEC §5), the released scripts' defaults."""

    epoch: int = setting(10, "number of epochs", kind="train", type=positive_int)
    batch_size: int = setting(8, "images per optimiser step", kind="train", type=positive_int)
    learning_rate: float = setting(1e-3, "Adam learning rate of the prompt learner (ViP-ICA)", kind="train",
                                   type=float, check=positive)
    fgp_learning_rate: float = setting(1e-5, "Adam learning rate of ViP-FGP", kind="train", type=float,
                                       check=positive)
    seed: int = setting(111, "seed of initialisation and shuffling", kind="train", type=int)

    def __post_init__(self):
        problems = setting_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def augmentation(self):
        """ViP²-CLIP trains without augmentation (so its frozen features can be cached)."""
        return None
