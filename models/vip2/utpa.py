"""UTPA: unified text–patch alignment, from similarities to maps and image logits (SPEC §4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import CLIP_TEMPERATURE as TEMPERATURE


def align(patch_features: torch.Tensor, text_features: torch.Tensor):
    """Cosine similarities `[N, L, 2]` and their two-class softmax at temperature 0.07.

    Always in float32: divided by 0.07 they become logits, where bf16's rounding of the
    similarities would show, and the product is a negligible share of the work."""
    with torch.autocast(patch_features.device.type, enabled=False):
        similarity = patch_features.float() @ text_features.float().transpose(1, 2)
    return similarity, (similarity / TEMPERATURE).softmax(dim=-1)


def to_grid(per_patch: torch.Tensor) -> torch.Tensor:
    """`[N, L, C]` per-patch values → `[N, C, g, g]` (patches in row-major order)."""
    n, length, channels = per_patch.shape
    side = round(length ** 0.5)
    return per_patch.transpose(1, 2).reshape(n, channels, side, side)


def upsample(grid_maps: torch.Tensor, image_size: int) -> torch.Tensor:
    return F.interpolate(grid_maps, size=(image_size, image_size), mode="bilinear", align_corners=False)


def image_logits(similarities: list[torch.Tensor], probabilities: list[torch.Tensor], topk: int) -> torch.Tensor:
    """Mean raw similarity over each layer's `topk` most abnormal patches, all layers pooled, / 0.07."""
    gathered = []
    for similarity, probability in zip(similarities, probabilities):
        index = probability[..., 1].topk(topk, dim=1).indices
        gathered.append(similarity.gather(1, index.unsqueeze(-1).expand(-1, -1, 2)))
    return torch.cat(gathered, dim=1).mean(dim=1) / TEMPERATURE
