"""ViP²-CLIP: frozen CLIP + ViP-ICA prompts + ViP-FGP + UTPA, wired as in the reference (SPEC §1-§6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prompt_ensemble import PromptLearner

from ..backbone import FrozenCLIP
from ..base import AnomalyModel, check_image_size
from ..checkpoint import CheckpointError, check_state
from ..losses import pixel_loss
from ..text_patch_attention import TextPatchAttention
from . import utpa

ICA_KEY = "prompt_learner"
FGP_KEY = "Zero_try"  # the authors' name for the FGP module


@dataclass
class Alignment:
    """Per-layer similarities and probabilities at patch resolution, plus the image logits."""

    similarities: list[torch.Tensor]  # per layer, [N, L, 2]
    probabilities: list[torch.Tensor]  # per layer, [N, L, 2]
    logits: torch.Tensor  # [N, 2]


class ViP2CLIP(AnomalyModel):
    method = "vip2"
    quick_gelu = True
    positional_interpolation = "bilinear"

    def __init__(self, clip: torch.nn.Module, config):
        super().__init__(config)
        self.backbone = FrozenCLIP(clip, self.positional_interpolation)
        depth = self.backbone.num_vision_layers
        bad_layers = [layer for layer in config.features_list if not 1 <= layer <= depth]
        if bad_layers:
            raise ValueError(f"--features_list {bad_layers} outside the vision tower's layers 1..{depth}")
        check_image_size(config.image_size, self.backbone.patch_size)
        patches = self.backbone.grid_size(config.image_size) ** 2
        if config.topk > patches:
            raise ValueError(
                f"--topk {config.topk} exceeds the {patches} patches of a {config.image_size} px input")
        self.prompt_learner = PromptLearner(self.backbone.clip.token_embedding, self.backbone.embed_dim,
                                            config.n_ctx, config.n_cls, config.fix_quirks)
        self.fgp = TextPatchAttention(self.backbone.embed_dim, self.backbone.embed_dim)

    # ------------------------------------------------------------------ the model
    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Global feature `[N, E]` then one patch-feature tensor `[N, L, E]` per layer, all L2-normalised.

        The reference projects the final class token without `ln_post` (a quirk);
        `fix_quirks` applies it, as standard CLIP does."""
        layers = self.config.features_list
        final, taps = self.backbone.residual_streams(images, layers)
        with torch.no_grad():
            patches = tuple(F.normalize(self.backbone.project(taps[layer][:, 1:]), dim=-1) for layer in layers)
            global_feature = F.normalize(self.backbone.project(final[:, 0], self.config.fix_quirks), dim=-1)
        return (global_feature, *patches)

    def text_features(self, global_feature: torch.Tensor) -> torch.Tensor:
        """The per-image normal/abnormal text embeddings `G [N, 2, E]`."""
        prompts, token_ids = self.prompt_learner(global_feature)
        encoded = self.backbone.encode_prompts(prompts, token_ids, self.prompt_learner.sequence_length)
        n = global_feature.shape[0]  # a reshape, not chunk(2): chunk would pin an exported graph's batch size
        return encoded.reshape(2, n, -1).transpose(0, 1)

    def align(self, features: tuple[torch.Tensor, ...]) -> Alignment:
        global_feature, *patch_features = features
        text = self.text_features(global_feature)
        similarities, probabilities = [], []
        for patches in patch_features:
            # ablation (--no_fgp): the text embeddings unrefined by the patches (FGP then gets no gradient)
            similarity, probability = utpa.align(patches, self.fgp(text, patches) if self.config.fgp else text)
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
        so this equals the reference's per-layer upsampling up to rounding."""
        layers = [alignment.probabilities[i] for i in self.config.map_layers]
        per_patch = torch.stack([(p[..., 1] + 1 - p[..., 0]) / 2 for p in layers]).mean(dim=0)
        return utpa.upsample(utpa.to_grid(per_patch.unsqueeze(-1)), self.config.image_size)[:, 0]

    @staticmethod
    def image_scores(alignment: Alignment) -> torch.Tensor:
        return alignment.logits.softmax(dim=-1)[:, 1]

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alignment = self.align(self.extract_features(images))
        return self.anomaly_map(alignment), self.image_scores(alignment)

    # ------------------------------------------------------------------ training (SPEC §5)
    def training_losses(self, features, masks, labels) -> dict[str, torch.Tensor]:
        alignment = self.align(features)
        maps = [m.float() for m in self.probability_maps(alignment)]
        image_loss = F.cross_entropy(alignment.logits.float(), labels)
        mask_loss = pixel_loss(maps, masks.float())
        return {"loss": image_loss + mask_loss, "image_loss": image_loss, "pixel_loss": mask_loss}

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.prompt_learner, self.fgp]

    def make_optimizer(self, training) -> torch.optim.Optimizer:
        return torch.optim.Adam([{"params": list(self.prompt_learner.parameters()), "lr": training.learning_rate},
                                 {"params": list(self.fgp.parameters()), "lr": training.fgp_learning_rate}])

    # ------------------------------------------------------------------ checkpoints (SPEC §8)
    @classmethod
    def recognizes(cls, checkpoint: dict) -> bool:
        return isinstance(checkpoint.get(ICA_KEY), dict) and isinstance(checkpoint.get(FGP_KEY), dict)

    @classmethod
    def recorded_settings(cls, checkpoint: dict) -> dict:
        """The authors' files record nothing; `n_ctx`, `n_cls` and the prompt quirk show in their
        tensors (with the quirk, both prompts embed the same state word)."""
        if isinstance(checkpoint.get("settings"), dict):
            return dict(checkpoint["settings"])
        ica = checkpoint[ICA_KEY]
        try:
            return {"n_ctx": int(ica["ctx_pos"].shape[0]), "n_cls": int(ica["cls_ctx"].shape[0]),
                    "fix_quirks": not torch.equal(ica["token_middle_pos"], ica["token_middle_neg"])}
        except (KeyError, AttributeError, IndexError) as error:
            raise CheckpointError(f"the checkpoint's {ICA_KEY} lacks {error}: not a ViP²-CLIP prompt learner") \
                from None

    def load_checkpoint(self, checkpoint: dict, path) -> None:
        config, backbone = self.config, self.backbone
        context = (f"n_ctx={config.n_ctx}, n_cls={config.n_cls} on a CLIP with embedding width "
                   f"{backbone.embed_dim} and text width {backbone.text_width}")
        check_state(self.prompt_learner, checkpoint[ICA_KEY], "prompt learner", path, context)
        check_state(self.fgp, checkpoint[FGP_KEY], "FGP", path, context)
        self.prompt_learner.load_state_dict(checkpoint[ICA_KEY])
        self.fgp.load_state_dict(checkpoint[FGP_KEY])

    def checkpoint_state(self) -> dict:
        return {ICA_KEY: self.prompt_learner.state_dict(), FGP_KEY: self.fgp.state_dict()}
