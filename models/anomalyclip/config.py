"""AnomalyCLIP's settings (SPEC_ANOMALYCLIP §9): the one place where its defaults live.

The flags keep the reference's names. Defaults are its argparse defaults, except
`--features_list`, which takes the value its released train.sh / test.sh pass (24): with
the reference's current code the argparse default (6 12 18 24) gives four different maps,
which is neither what the released checkpoints were trained with nor what the paper reports
(SPEC_ANOMALYCLIP §8).
"""
from __future__ import annotations

from dataclasses import dataclass

from utils import non_negative_float, non_negative_int, positive_int

from ..settings import at_least, non_empty, setting, setting_problems

# Constants of the method (literals in the reference, not flags): SPEC_ANOMALYCLIP §3-§6.
TEMPERATURE = 0.07
LOCAL_LOSS_WEIGHT = 4.0  # `lam` in the reference's train.py (since 13 Apr 2025; see SPEC §8)
PROJECTION_WIDTH = 896  # out_features of the unused `compound_prompt_projections` (kept for the checkpoint layout)
SMOOTHING_SIGMA = 4.0  # test.py's --sigma default
ADAM_BETAS = (0.5, 0.999)


@dataclass
class AnomalyCLIPConfig:
    """Everything that shapes an AnomalyCLIP model or its outputs."""

    n_ctx: int = setting(12, "learnable tokens at the head of each object-agnostic prompt", kind="shape",
                         type=positive_int, check=at_least(1))
    depth: int = setting(9, "text layers that carry learnable tokens: the prompt's own, then depth-1 deeper "
                            "layers with fresh --t_n_ctx tokens each", kind="shape", type=positive_int,
                         check=at_least(1))
    t_n_ctx: int = setting(4, "learnable tokens inserted in each deeper text layer", kind="shape",
                           type=positive_int, check=at_least(1))
    features_list: tuple[int, ...] = setting(
        (24,), "1-based vision layers whose patch tokens make maps (the released scripts: 24)",
        type=positive_int, nargs="+", check=non_empty)
    feature_map_layer: tuple[int, ...] = setting(
        (0, 1, 2, 3), "the layers of --features_list from position FIRST on make the maps and the pixel losses (as "
                      "the reference, only the first value counts)", type=non_negative_int, nargs="+",
        check=non_empty)
    dpam_layer: int = setting(20, "DPAM_layer: the top dpam_layer-1 vision blocks also run the value-value "
                                  "attention path the maps are read from (1: none; a literal 20 in the reference)",
                              type=positive_int, check=at_least(1))
    image_size: int = setting(518, "input size in pixels (a multiple of the 14 px patch)", type=positive_int,
                              check=at_least(1))
    sigma: float = setting(SMOOTHING_SIGMA, "sigma of the Gaussian smoothing of the maps, in pixels (0: none)",
                           kind="test", type=non_negative_float)

    def __post_init__(self):
        self.features_list = tuple(int(x) for x in self.features_list)
        self.feature_map_layer = tuple(int(x) for x in self.feature_map_layer)
        problems = setting_problems(self)
        if self.feature_map_layer and self.feature_map_layer[0] >= len(self.features_list):
            problems.append(f"--feature_map_layer {self.feature_map_layer[0]} (its first value, the only one used) "
                            f"leaves no layer of --features_list {list(self.features_list)} to make a map")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def map_layers(self) -> tuple[int, ...]:
        """The 1-based vision layers whose maps are summed and trained: `features_list[feature_map_layer[0]:]`."""
        return self.features_list[self.feature_map_layer[0]:]


@dataclass
class AnomalyCLIPTraining:
    """AnomalyCLIP's training hyperparameters (SPEC_ANOMALYCLIP §7): the reference's defaults."""

    epoch: int = setting(15, "number of epochs", kind="train", type=positive_int)
    batch_size: int = setting(8, "images per optimiser step", kind="train", type=positive_int)
    learning_rate: float = setting(1e-3, "Adam learning rate (betas 0.5, 0.999) of the prompt learner",
                                   kind="train", type=float)
    seed: int = setting(111, "seed of initialisation and shuffling", kind="train", type=int)

    def augmentation(self):
        """AnomalyCLIP trains without augmentation (so its frozen features can be cached)."""
        return None
