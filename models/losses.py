"""Training losses of the reference (SPEC §5): focal and dice on the two-class probability maps."""
from __future__ import annotations

import torch

SMOOTH = 1e-5


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """`probabilities [N, 2, H, W]` (already softmaxed), `target [N, H, W]` in {0, 1}."""
    flat = probabilities.permute(0, 2, 3, 1).reshape(-1, probabilities.shape[1])
    one_hot = torch.zeros_like(flat).scatter_(1, target.reshape(-1, 1).long(), 1.0)
    one_hot = one_hot.clamp(SMOOTH / (flat.shape[1] - 1), 1.0 - SMOOTH)
    pt = (one_hot * flat).sum(dim=1) + SMOOTH
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One minus the mean per-sample soft dice, with smoothing 1 (`[N, H, W]` inputs)."""
    n = prediction.shape[0]
    prediction, target = prediction.reshape(n, -1), target.reshape(n, -1)
    dice = (2 * (prediction * target).sum(1) + 1) / (prediction.sum(1) + target.sum(1) + 1)
    return 1 - dice.sum() / n


def pixel_loss(probability_maps: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum over layers of focal + dice(abnormal, gt) + dice(normal, 1 - gt)."""
    total = 0
    for maps in probability_maps:
        total = total + focal_loss(maps, target)
        total = total + dice_loss(maps[:, 1], target)
        total = total + dice_loss(maps[:, 0], 1 - target)
    return total
