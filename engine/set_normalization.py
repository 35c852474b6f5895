"""Min-max normalisation over an evaluated set, per class: VCP-CLIP's last step (SPEC_VCP §7), in one place for
`test.py` (torch tensors, on the GPU too), `predict.py`, the demo and exported files' runs (NumPy, torch-free)."""
from __future__ import annotations

import numpy as np


def normalize_over_set(maps, scores, classes=None):
    """Min-max maps and scores over the set, per class (all one class when `classes` is None), float32.

    `maps` `[N, S, S]` and `scores` `[N]` are NumPy arrays or torch tensors (the result is of the same kind, on the
    same device). A class whose maps are constant gets zero maps (the reference's `normalize`); scores are divided
    as the reference does, so a one-image class gets NaN (reported as undefined)."""
    is_numpy = isinstance(maps, np.ndarray) or not hasattr(maps, "clone")
    if is_numpy:
        maps, scores = np.asarray(maps, dtype=np.float32), np.asarray(scores, dtype=np.float32)
    normalised_maps = maps.copy() if is_numpy else maps.clone()
    normalised_scores = scores.copy() if is_numpy else scores.clone()
    names = ["all"] * len(scores) if classes is None else list(classes)
    for name in dict.fromkeys(names):
        index = np.array([i for i, other in enumerate(names) if other == name])
        class_maps, class_scores = maps[index], scores[index]
        low, high = class_maps.min(), class_maps.max()
        normalised_maps[index] = (class_maps - low) / (high - low) if high > low else class_maps * 0
        with np.errstate(invalid="ignore", divide="ignore"):
            normalised_scores[index] = (class_scores - class_scores.min()) / (class_scores.max() - class_scores.min())
    return normalised_maps, normalised_scores
