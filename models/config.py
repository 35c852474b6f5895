"""Settings of a ViP²-CLIP model: the one place where defaults live.

`train.py` and `test.py` take their argparse defaults from `ViP2Config`, and every
checkpoint that `train.py` writes records the settings it was trained with, so
`test.py` needs no repeated flags.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from utils import non_negative_int, positive_int

# Constants of the method (SPEC §3, §4): not exposed as flags because the released
# checkpoints were trained with them.
TEMPERATURE = 0.07
FGP_HEADS = 8
META_NET_HIDDEN = 384
PROMPT_INIT_STD = 0.02
NORMAL_STATE_WORD = "good"
ABNORMAL_STATE_WORD = "damaged"
PLACEHOLDER_TOKEN = "X"
SMOOTHING_SIGMA = 8  # test-time Gaussian on the anomaly maps (SPEC §6)


@dataclass
class ViP2Config:
    """Everything that shapes a model or its outputs, with the released scripts' defaults."""

    n_ctx: int = 7
    n_cls: int = 3
    topk: int = 50
    features_list: tuple[int, ...] = (6, 12, 18, 24)
    image_size: int = 518
    fix_quirks: bool = False
    feature_map_layer: tuple[int, ...] | None = None  # indices into features_list for the map; None: all

    def __post_init__(self):
        self.features_list = tuple(int(x) for x in self.features_list)
        if self.feature_map_layer is not None:
            self.feature_map_layer = tuple(int(x) for x in self.feature_map_layer)
        problems = []
        if self.n_ctx < 1:
            problems.append(f"--n_ctx must be >= 1 (got {self.n_ctx})")
        if self.n_cls < 1:
            problems.append(f"--n_cls must be >= 1 (got {self.n_cls})")
        if self.image_size < 1:
            problems.append(f"--image_size must be >= 1 (got {self.image_size})")
        if self.topk < 1:
            problems.append(f"--topk must be >= 1 (got {self.topk})")
        if not self.features_list:
            problems.append("--features_list needs at least one layer")
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

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "ViP2Config":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(ViP2Config))
DEFAULTS = ViP2Config()


def add_setting_overrides(group) -> None:
    """Flags of test.py and predict.py that override a checkpoint's settings; None means "the checkpoint's"."""
    group.add_argument("--image_size", type=positive_int, default=None,
                       help=f"input size in pixels (default: the checkpoint's, else {DEFAULTS.image_size})")
    group.add_argument("--n_ctx", type=positive_int, default=None,
                       help=f"context tokens (default: the checkpoint's, else {DEFAULTS.n_ctx})")
    group.add_argument("--n_cls", type=positive_int, default=None,
                       help=f"image-conditioned tokens (default: the checkpoint's, else {DEFAULTS.n_cls})")
    group.add_argument("--topk", type=positive_int, default=None,
                       help=f"patches pooled per layer (default: the checkpoint's, else {DEFAULTS.topk})")
    group.add_argument("--features_list", type=positive_int, nargs="+", default=None,
                       help="1-based vision layers (default: the checkpoint's, else "
                            f"{' '.join(map(str, DEFAULTS.features_list))})")
    group.add_argument("--feature_map_layer", type=non_negative_int, nargs="+", default=None,
                       help="indices into --features_list averaged into the anomaly map (default: the checkpoint's, "
                            "else all)")


def setting_overrides(args) -> dict:
    return {name: getattr(args, name, None) for name in SETTING_NAMES}
