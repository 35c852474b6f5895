"""AdaCLIP's settings (SPEC_ADACLIP §9): the one place where its defaults live.

The flags keep the reference's names and its argparse defaults (caoyunkang/AdaCLIP train.py and
test.py). The feature hierarchy has no flag there: it is the four quarter points of the vision
tower (6 12 18 24 on ViT-L/14), computed from the tower here too.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils import boolean, non_negative_float, positive_int

from ..settings import at_least, setting, setting_problems

# Constants of the method (literals in the reference, not flags): SPEC_ADACLIP §3-§7.
LOGIT_SCALE = 100.0  # patch/image-text similarities are scaled by a literal 100
HSF_ALPHA = 0.2  # weight of the clustered abnormal feature in the fused image feature
HSF_TOKENS_PER_CLUSTER = 5  # the HSF gathers the k_clusters * 5 most abnormal patches
KMEANS_MAX_ITER = 300  # scikit-learn's KMeans default, which the reference runs
# An exported graph cannot stop on data: it unrolls this many Lloyd steps (300 would take minutes to export;
# the clustered 5k patches settle in a few steps; export.py's check against PyTorch would show a shortfall).
KMEANS_EXPORT_ITER = 30
SMOOTHING_SIGMA = 4.0  # gaussian_filter(sigma=4) in the reference's evaluation
ADAMW_BETAS = (0.5, 0.999)  # AdamW with torch's default weight decay 0.01
PROMPTING_TYPES = ("", "S", "D", "SD")
PROMPTING_BRANCHES = ("", "V", "L", "VL")


@dataclass
class AdaCLIPConfig:
    """Everything that shapes an AdaCLIP model or its outputs."""

    image_size: int = setting(518, "input size in pixels (a multiple of the 14 px patch)", type=positive_int,
                              check=at_least(1))
    prompting_depth: int = setting(4, "blocks of each tower that carry learnable prompts (J in the paper)",
                                   kind="shape", type=positive_int, check=at_least(1))
    prompting_length: int = setting(5, "learnable prompt tokens per prompted block", kind="shape",
                                    type=positive_int, check=at_least(1))
    prompting_type: str = setting("SD", "S: static prompts (shared), D: dynamic prompts (generated from each "
                                        "image), SD: both (hybrid)", kind="shape", choices=PROMPTING_TYPES)
    prompting_branch: str = setting("VL", "the towers that carry prompts: V vision, L language, VL both",
                                    kind="shape", choices=PROMPTING_BRANCHES)
    use_hsf: bool = setting(True, "hybrid semantic fusion: the image score also reads the clustered most "
                                  "abnormal patches (True/False)", type=boolean)
    k_clusters: int = setting(20, "k-means clusters of the hybrid semantic fusion (it gathers 5x as many "
                                  "patches)", type=positive_int, check=at_least(1))
    sigma: float = setting(SMOOTHING_SIGMA, "sigma of the Gaussian smoothing of the maps, in pixels (0: none)",
                           kind="test", type=non_negative_float)

    def __post_init__(self):
        problems = setting_problems(self)
        if self.prompting_type not in PROMPTING_TYPES:
            problems.append(f"--prompting_type must be one of {PROMPTING_TYPES}, got {self.prompting_type!r}")
        if self.prompting_branch not in PROMPTING_BRANCHES:
            problems.append(f"--prompting_branch must be one of {PROMPTING_BRANCHES}, got {self.prompting_branch!r}")
        elif self.prompting_branch and not self.prompting_type:
            problems.append(f"--prompting_branch {self.prompting_branch} prompts a tower but --prompting_type is "
                            "empty: pass S, D or SD (or --prompting_branch '' for no prompts)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def static(self) -> bool:
        return "S" in self.prompting_type

    @property
    def dynamic(self) -> bool:
        return "D" in self.prompting_type

    @property
    def visual_prompts(self) -> bool:
        return "V" in self.prompting_branch

    @property
    def text_prompts(self) -> bool:
        return "L" in self.prompting_branch


@dataclass
class AdaCLIPTraining:
    """AdaCLIP's training hyperparameters (SPEC_ADACLIP §7): the reference's defaults."""

    epoch: int = setting(5, "number of epochs", kind="train", type=positive_int)
    batch_size: int = setting(1, "images per optimiser step (the reference supports 1 only; larger batches "
                                 "run the same per-image computation)", kind="train", type=positive_int)
    learning_rate: float = setting(0.01, "AdamW learning rate (betas 0.5, 0.999; weight decay 0.01)",
                                   kind="train", type=float)
    seed: int = setting(111, "seed of initialisation and shuffling", kind="train", type=int)
    aug_rate: float = setting(-1.0, "probability that a training image becomes a 2x2 mosaic of four distinct "
                                    "images of its class (the reference: 0.2 for MVTec AD, hard-coded in its "
                                    "dataset class; 0 for the others; negative: never)", kind="train", type=float)

    def __post_init__(self):
        problems = setting_problems(self)
        if self.aug_rate > 1.0:
            problems.append(f"--aug_rate must be a probability in [0, 1] (or negative: never), got {self.aug_rate}")
        if problems:
            raise ValueError("; ".join(problems))

    def augmentation(self):
        """The mosaic only; None when off, so the training images can be cached."""
        from engine.augment import Augmentation

        augmentation = Augmentation(mosaic_rate=self.aug_rate, albumentations=False, mosaic_pool="distinct_items")
        return augmentation if augmentation.active else None
