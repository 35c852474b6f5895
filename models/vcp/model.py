"""VCP-CLIP: frozen CLIP + unified/deep text prompts + Pre-VCP + Post-VCP, wired as in the reference (SPEC_VCP).

Two branches make a map per layer: Pre-VCP ("raw": linear-projected patches against the
text embeddings) and Post-VCP ("new": raw patches against text updated from them). At
test time the branch maps are fused (`alpha`), smoothed, and normalised per class over
the evaluated set together with the image scores (`finalize`, SPEC_VCP §7).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import FrozenCLIP
from ..base import AnomalyModel, check_image_size
from ..checkpoint import CheckpointError, check_state
from ..losses import dice_loss, focal_loss
from ..text_patch_attention import TextPatchAttention
from .config import TEMPERATURE_INIT
from .text import DeepTextPrompts, UnifiedTextEncoder

LINEAR_KEY, PRE_VCP_KEY, POST_VCP_KEY = "trainable_linearlayer", "New_Lan_Embed", "Zero_try"
PROMPT_KEYS = ("prompt_text_projection", "prompt_embeddings", "deep_prompt_embeddings", "prompt_proj.weight",
               "prompt_proj.bias", "prompt_norm.weight", "prompt_norm.bias")


class LinearHeads(nn.Module):
    """One `Linear(W, E)` per tapped layer, on the patch rows (the reference's `LinearLayer`)."""

    def __init__(self, vision_width: int, embed_dim: int, count: int):
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(vision_width, embed_dim) for _ in range(count))


class _Conv(nn.Module):
    """Holds the Pre-VCP convolution under the reference's name (`prompt_linear1.fc`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv1d(1, channels, kernel_size=3, padding="same")


class ContextPrompting(nn.Module):
    """Pre-VCP (the reference's `Context_Prompting`): category vectors `C = Q + conv(f)` from the global feature."""

    def __init__(self, text_width: int, prompt_len: int):
        super().__init__()
        self.prompt_query = nn.Parameter(torch.empty(1, prompt_len, text_width))
        nn.init.trunc_normal_(self.prompt_query, std=1.0, a=-2.0, b=2.0)
        self.prompt_temp = nn.Parameter(torch.tensor(math.log(TEMPERATURE_INIT)))  # tau_1
        self.prompt_linear1 = _Conv(prompt_len)

    def forward(self, global_feature: torch.Tensor, use_global: bool = True) -> torch.Tensor:
        if not use_global:
            return self.prompt_query.expand(global_feature.shape[0], -1, -1)
        return self.prompt_query + self.prompt_linear1.fc(global_feature.unsqueeze(1))


class VCPCLIP(AnomalyModel):
    method = "vcp"
    quick_gelu = False  # the reference runs CLIP with the exact GELU (a quirk, SPEC_VCP §1)
    positional_interpolation = "bicubic-antialias"
    set_normalization = True

    def __init__(self, clip: nn.Module, config):
        super().__init__(config)
        self.backbone = FrozenCLIP(clip, self.positional_interpolation)
        backbone = self.backbone
        depth, text_blocks = backbone.num_vision_layers, backbone.num_text_layers
        bad_layers = [layer for layer in config.features_list if not 1 <= layer <= depth]
        if bad_layers:
            raise ValueError(f"--features_list {bad_layers} outside the vision tower's layers 1..{depth}")
        check_image_size(config.image_size, backbone.patch_size)
        if backbone.embed_dim != backbone.text_width:
            raise ValueError(f"VCP-CLIP needs a CLIP whose embedding width equals its text width (Pre-VCP adds an "
                             f"embedding to text rows); this one has {backbone.embed_dim} and {backbone.text_width}")
        deep = text_blocks - 1
        if config.total_d_layer_len is None:
            config.total_d_layer_len = deep
        if config.total_d_layer_len not in (0, deep):
            raise ValueError(f"--total_d_layer_len {config.total_d_layer_len}: this CLIP's text tower has "
                             f"{text_blocks} blocks, so it must be 0 (shallow prompts) or {deep} (deep prompts)")
        pixels = config.image_size ** 2
        if config.score_topk > pixels:
            raise ValueError(f"--score_topk {config.score_topk} exceeds the {pixels} pixels of a "
                             f"{config.image_size} px map")
        width, embed = backbone.vision_width, backbone.embed_dim
        self.linear_heads = LinearHeads(width, embed, len(config.features_list))
        self.context_prompting = ContextPrompting(backbone.text_width, config.prompt_len)
        self.post_vcp = TextPatchAttention(embed, width)
        self.text_prompts = DeepTextPrompts(backbone.text_width, embed, config.deep_prompt_len,
                                            config.total_d_layer_len)
        self.text_encoder = UnifiedTextEncoder(backbone, config.prompt_len, self.text_prompts, config.templates)

    def configure_training(self, training) -> None:
        """The deep-text-prompt dropout (`--dtp_dropout`), active in training mode only."""
        self.text_prompts.dropout.p = training.dtp_dropout

    # ------------------------------------------------------------------ the model (SPEC_VCP §1-§5)
    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Global feature `f [N, E]` (`ln_post`, projection, not normalised), then each tapped layer's
        residual stream `[N, 1+L, W]`, class token included, in increasing layer order."""
        final, taps = self.backbone.residual_streams(images, self.config.layers)
        with torch.no_grad():
            global_feature = self.backbone.project(final[:, 0])
        return (global_feature, *(taps[layer] for layer in self.config.layers))

    def branch_logits(self, features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the scaled cosine logits `[N, L, 2]` of the Post-VCP and the Pre-VCP branch."""
        global_feature, *streams = features
        category_vectors = self.context_prompting(global_feature, self.config.use_global)
        text = self.text_encoder(category_vectors)  # [N, 2, E]
        tau_post, tau_pre = self.post_vcp.prompt_temp_l1.exp(), self.context_prompting.prompt_temp.exp()
        post, pre = [], []
        for head, stream in zip(self.linear_heads.fc, streams):
            patches = stream[:, 1:]
            normalised = patches / patches.norm(dim=-1, keepdim=True)
            updated = self.post_vcp(text, normalised)  # [N, 2, W]
            projected = head(patches)
            projected = projected / projected.norm(dim=-1, keepdim=True)
            # The scaled cosines become logits at temperature ~1/14: always float32, as ViP²-CLIP's UTPA
            # (bf16's rounding would show in every map and score; the products are a sliver of the work).
            with torch.autocast(patches.device.type, enabled=False):
                post.append((tau_post * normalised.float()) @ updated.float().transpose(1, 2))
                pre.append((tau_pre * projected.float()) @ text.float().transpose(1, 2))
        return post, pre

    def probability_maps(self, logits: torch.Tensor) -> torch.Tensor:
        """`[N, L, 2]` logits -> the two-class softmax of their bilinear upsampling (align_corners=True), `[N, 2, S, S]`."""
        n, length, _ = logits.shape
        side = int(math.sqrt(length))
        grid = logits.float().transpose(1, 2).reshape(n, 2, side, side)
        size = self.config.image_size
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True).softmax(dim=1)

    def branch_maps(self, features) -> tuple[torch.Tensor, torch.Tensor]:
        """Test time: the mean over layers of each branch's abnormal probability, `M_new`, `M_raw` `[N, S, S]`."""
        post, pre = self.branch_logits(features)
        new = torch.stack([self.probability_maps(z)[:, 1] for z in post]).mean(dim=0)
        raw = torch.stack([self.probability_maps(z)[:, 1] for z in pre]).mean(dim=0)
        return new, raw

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused map `alpha * M_raw + (1 - alpha) * M_new` and the image score before normalisation:
        the mean of each branch map's `score_topk` highest pixels, summed."""
        new, raw = self.branch_maps(self.extract_features(images))
        k = self.config.score_topk
        if not self.config.post_vcp:  # ablation (--no_post_vcp): the Pre-VCP branch alone
            return raw, raw.flatten(1).topk(k, dim=1).values.mean(dim=1)
        alpha = self.config.alpha
        fused = alpha * raw + (1 - alpha) * new
        score = raw.flatten(1).topk(k, dim=1).values.mean(dim=1) + new.flatten(1).topk(k, dim=1).values.mean(dim=1)
        return fused, score

    def validation_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per branch, the abnormal probability summed over layers (the reference's per-epoch validation)."""
        post, pre = self.branch_logits(self.extract_features(images))
        return {"ap_base": torch.stack([self.probability_maps(z)[:, 1] for z in pre]).sum(dim=0),
                "ap_new": torch.stack([self.probability_maps(z)[:, 1] for z in post]).sum(dim=0)}

    # ------------------------------------------------------------------ training (SPEC_VCP §6)
    def training_losses(self, features, masks, labels) -> dict[str, torch.Tensor]:
        """Focal + dice (abnormal channel) on every layer's map of both branches, at full resolution."""
        post, pre = self.branch_logits(features)
        target = masks.float()
        branch_losses = {}
        for name, logits in (("loss_new", post), ("loss_base", pre)):
            total = 0
            for z in logits:
                maps = self.probability_maps(z)
                total = total + focal_loss(maps, target)
                total = total + dice_loss(maps[:, 1], target)
            branch_losses[name] = total
        if not self.config.post_vcp:  # ablation (--no_post_vcp): Post-VCP gets no loss, so it never trains
            return {"loss": branch_losses["loss_base"], **branch_losses}
        return {"loss": branch_losses["loss_new"] + branch_losses["loss_base"], **branch_losses}

    def trainable_modules(self) -> list[nn.Module]:
        return [self.post_vcp, self.linear_heads, self.context_prompting, self.text_prompts]

    def make_optimizer(self, training) -> torch.optim.Optimizer:
        """Adam, betas (0.5, 0.999): the temperatures at their own rate, everything else trained at `learning_rate`
        (the unused `prompt_text_projection` gets no gradient, so Adam leaves it)."""
        temperatures = [self.post_vcp.prompt_temp_l1, self.context_prompting.prompt_temp]
        chosen = {id(p) for p in temperatures}
        rest = [p for module in self.trainable_modules() for p in module.parameters() if id(p) not in chosen]
        return torch.optim.Adam([{"params": rest, "lr": training.learning_rate},
                                 {"params": temperatures, "lr": training.temperature_learning_rate}],
                                betas=(0.5, 0.999), eps=1e-8)

    # ------------------------------------------------------------------ checkpoints (SPEC_VCP §9)
    @classmethod
    def recognizes(cls, checkpoint: dict) -> bool:
        return all(isinstance(checkpoint.get(key), dict) for key in (LINEAR_KEY, PRE_VCP_KEY, POST_VCP_KEY))

    @classmethod
    def recorded_settings(cls, checkpoint: dict) -> dict:
        """This project's files record their settings; the authors' tell the prompt lengths, the depth mode
        and the number of tapped layers through their tensor shapes."""
        if isinstance(checkpoint.get("settings"), dict):
            return dict(checkpoint["settings"])
        try:
            recorded = {"prompt_len": int(checkpoint[PRE_VCP_KEY]["prompt_query"].shape[1]),
                        "deep_prompt_len": int(checkpoint["prompt_embeddings"].shape[1])}
        except (KeyError, AttributeError, IndexError) as error:
            raise CheckpointError(f"the checkpoint lacks {error}: not a VCP-CLIP checkpoint") from None
        deep = checkpoint.get("deep_prompt_embeddings")
        recorded["total_d_layer_len"] = int(deep.shape[0]) if deep is not None else 0
        return recorded

    def load_checkpoint(self, checkpoint: dict, path) -> None:
        """Every part strictly (the reference loaded two of them with `strict=False`, silently leaving
        random weights where a key was missing)."""
        config, backbone = self.config, self.backbone
        context = (f"features_list of {len(config.features_list)} layers, prompt_len={config.prompt_len}, "
                   f"deep_prompt_len={config.deep_prompt_len}, total_d_layer_len={config.total_d_layer_len} on a "
                   f"CLIP of vision width {backbone.vision_width}, embedding width {backbone.embed_dim}, "
                   f"{backbone.num_text_layers} text blocks")
        parts = ((self.linear_heads, LINEAR_KEY, "linear layer"), (self.context_prompting, PRE_VCP_KEY, "Pre-VCP"),
                 (self.post_vcp, POST_VCP_KEY, "Post-VCP"))
        for module, key, what in parts:
            check_state(module, checkpoint[key], what, path, context)
        prompts = {key: checkpoint[key] for key in PROMPT_KEYS if key in checkpoint}
        check_state(self.text_prompts, prompts, "deep text prompts", path, context)
        for module, key, _ in parts:
            module.load_state_dict(checkpoint[key])
        self.text_prompts.load_state_dict(prompts)

    def checkpoint_state(self) -> dict:
        state = {LINEAR_KEY: self.linear_heads.state_dict(), PRE_VCP_KEY: self.context_prompting.state_dict(),
                 POST_VCP_KEY: self.post_vcp.state_dict()}
        # The reference saves these CLIP parameters themselves at the top level (nn.Parameter, float32).
        for name, parameter in self.text_prompts.named_parameters():
            state[name] = nn.Parameter(parameter.detach().clone())
        return state

