"""ViP²-CLIP: frozen CLIP + ViP-ICA prompts + ViP-FGP + UTPA, wired as in the reference."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prompt_ensemble import PromptLearner

from . import utpa
from .backbone import FrozenCLIP
from .config import ViP2Config
from .fgp import FineGrainedPerception


@dataclass
class ImageFeatures:
    """What the frozen backbone gives for a batch; cacheable because nothing upstream trains."""

    global_feature: torch.Tensor  # [N, E]
    patch_features: tuple[torch.Tensor, ...]  # per layer, [N, L, E]


@dataclass
class Alignment:
    """Per-layer similarities and probabilities at patch resolution, plus the image logits."""

    similarities: list[torch.Tensor]  # per layer, [N, L, 2]
    probabilities: list[torch.Tensor]  # per layer, [N, L, 2]
    logits: torch.Tensor  # [N, 2]


class ViP2CLIP(nn.Module):
    def __init__(self, clip: nn.Module, config: ViP2Config):
        super().__init__()
        self.config = config
        self.backbone = FrozenCLIP(clip)
        depth = self.backbone.num_vision_layers
        bad_layers = [layer for layer in config.features_list if not 1 <= layer <= depth]
        if bad_layers:
            raise ValueError(f"--features_list {bad_layers} outside the vision tower's layers 1..{depth}")
        patch_size = self.backbone.patch_size
        if config.image_size < patch_size:
            raise ValueError(f"--image_size {config.image_size} is smaller than one {patch_size} px CLIP patch")
        patches = self.backbone.grid_size(config.image_size) ** 2
        if config.topk > patches:
            raise ValueError(
                f"--topk {config.topk} exceeds the {patches} patches of a {config.image_size} px input")
        self.prompt_learner = PromptLearner(self.backbone.clip.token_embedding, self.backbone.embed_dim,
                                            config.n_ctx, config.n_cls, config.fix_quirks)
        self.fgp = FineGrainedPerception(self.backbone.embed_dim)

    def trainable_parameters(self):
        return {"prompt_learner": list(self.prompt_learner.parameters()), "fgp": list(self.fgp.parameters())}

    def extract_features(self, images: torch.Tensor) -> ImageFeatures:
        global_feature, patch_features = self.backbone.encode_image(
            images, self.config.features_list, global_through_ln_post=self.config.fix_quirks)
        return ImageFeatures(global_feature, patch_features)

    def text_features(self, global_feature: torch.Tensor) -> torch.Tensor:
        """The per-image normal/abnormal text embeddings `G [N, 2, E]`."""
        prompts, token_ids = self.prompt_learner(global_feature)
        encoded = self.backbone.encode_prompts(prompts, token_ids, self.prompt_learner.sequence_length)
        return torch.stack(encoded.chunk(2, dim=0), dim=1)

    def align(self, features: ImageFeatures) -> Alignment:
        text = self.text_features(features.global_feature)
        similarities, probabilities = [], []
        for patches in features.patch_features:
            similarity, probability = utpa.align(patches, self.fgp(text, patches))
            similarities.append(similarity)
            probabilities.append(probability)
        logits = utpa.image_logits(similarities, probabilities, self.config.topk)
        return Alignment(similarities, probabilities, logits)

    def probability_maps(self, alignment: Alignment) -> list[torch.Tensor]:
        """Per layer, the two-class probabilities upsampled to the input size, `[N, 2, S, S]` (for the losses)."""
        return [utpa.upsample(utpa.to_grid(p), self.config.image_size) for p in alignment.probabilities]

    def anomaly_map(self, alignment: Alignment) -> torch.Tensor:
        """Mean over the map layers of `(P_abnormal + 1 - P_normal) / 2`, at the input size, `[N, S, S]`.

        Averaged at patch resolution and upsampled once: bilinear upsampling is linear,
        so this equals the reference's per-layer upsampling up to rounding.
        """
        layers = [alignment.probabilities[i] for i in self.config.map_layers]
        per_patch = torch.stack([(p[..., 1] + 1 - p[..., 0]) / 2 for p in layers]).mean(dim=0)
        return utpa.upsample(utpa.to_grid(per_patch.unsqueeze(-1)), self.config.image_size)[:, 0]

    @staticmethod
    def image_scores(alignment: Alignment) -> torch.Tensor:
        return alignment.logits.softmax(dim=-1)[:, 1]

    def forward(self, images: torch.Tensor):
        """Raw (unsmoothed) anomaly maps `[N, S, S]` and image scores `[N]`."""
        alignment = self.align(self.extract_features(images))
        return self.anomaly_map(alignment), self.image_scores(alignment)
