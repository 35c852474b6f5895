"""AnomalyCLIP: frozen CLIP with DPAM in the vision tower + object-agnostic prompts, wired as the reference
(zqhang/AnomalyCLIP; SPEC_ANOMALYCLIP §1-§7)."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..backbone import FrozenCLIP
from ..base import AnomalyModel, check_image_size
from ..checkpoint import CheckpointError, check_state
from ..losses import pixel_loss
from .config import ADAM_BETAS, LOCAL_LOSS_WEIGHT, TEMPERATURE
from .prompts import ObjectAgnosticPrompts, encode_text

LEARNER_KEY = "prompt_learner"


def _heads(attn) -> tuple[int, int]:
    return attn.num_heads, attn.embed_dim // attn.num_heads


def dpam_block(block, x_vv: torch.Tensor, x_ori: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block with the reference's dual path (`ResidualAttentionBlock` with its v-v `Attention`, ffn=False).

    Both attentions read `ln_1(x_ori)` through the block's own q/k/v projection: the original path is
    the block unchanged (q-k attention, then the MLP); the value-value path adds softmax(v vᵀ/√d) v,
    through the same output projection, to its own stream and skips the MLP. `[N, L, W]` in and out."""
    attn = block.attn
    heads, head_dim = _heads(attn)
    n, length, width = x_ori.shape
    qkv = F.linear(block.ln_1(x_ori), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    original = F.scaled_dot_product_attention(q, k, v)
    value_value = F.scaled_dot_product_attention(v, v, v)
    original = attn.out_proj(original.transpose(1, 2).reshape(n, length, width))
    value_value = attn.out_proj(value_value.transpose(1, 2).reshape(n, length, width))
    x_ori = x_ori + block.ls_1(original)
    x_ori = x_ori + block.ls_2(block.mlp(block.ln_2(x_ori)))
    return x_vv + value_value, x_ori


class AnomalyCLIP(AnomalyModel):
    method = "anomalyclip"
    quick_gelu = True
    positional_interpolation = "bilinear"

    def __init__(self, clip: torch.nn.Module, config):
        super().__init__(config)
        self.backbone = FrozenCLIP(clip, self.positional_interpolation)
        depth = self.backbone.num_vision_layers
        bad_layers = [layer for layer in config.features_list if not 1 <= layer <= depth]
        if bad_layers:
            raise ValueError(f"--features_list {bad_layers} outside the vision tower's layers 1..{depth}")
        if config.dpam_layer - 1 > depth:
            warnings.warn(f"--dpam_layer {config.dpam_layer} asks for the value-value path in the top "
                          f"{config.dpam_layer - 1} blocks of a {depth}-block vision tower: all {depth} get it (the "
                          f"reference fails on such a tower; --dpam_layer {depth + 1} says the same)", UserWarning,
                          stacklevel=2)
        check_image_size(config.image_size, self.backbone.patch_size)
        self.prompt_learner = ObjectAgnosticPrompts(self.backbone.clip.token_embedding, config.n_ctx, config.depth,
                                                    config.t_n_ctx)

    @property
    def first_dpam_block(self) -> int:
        """1-based index of the first block with the value-value path (blocks above it have it too)."""
        depth = self.backbone.num_vision_layers
        return depth - min(self.config.dpam_layer - 1, depth) + 1

    # ------------------------------------------------------------------ the vision tower (SPEC §1)
    @torch.no_grad()
    def vision_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The original path's final stream `[N, 1+L, W]` and, per layer of `map_layers`, the stream the
        reference taps there: the value-value path in DPAM blocks, the ordinary one below them."""
        visual = self.backbone.clip.visual
        x = visual.conv1(images)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1) + self.backbone.positional_embedding(grid).to(x.dtype)
        x = visual.ln_pre(x)
        wanted, first_dpam = set(self.config.map_layers), self.first_dpam_block
        taps, x_vv = {}, None
        for index, block in enumerate(visual.transformer.resblocks, start=1):
            if index < first_dpam:
                x = block(x)
            else:
                x_vv, x = dpam_block(block, x if x_vv is None else x_vv, x)
            if index in wanted:
                taps[index] = x if x_vv is None else x_vv
        return x, taps

    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Global feature `[N, E]` (the final class token projected **without** `ln_post`, as the reference),
        then per map layer the patch features `[N, L, E]` (`ln_post`, projection), all L2-normalised."""
        final, taps = self.vision_tokens(images)
        with torch.no_grad():
            global_feature = final[:, 0] @ self.backbone.clip.visual.proj
            global_feature = global_feature / global_feature.norm(dim=-1, keepdim=True)
            patches = []
            for layer in self.config.map_layers:
                tokens = self.backbone.project(taps[layer][:, 1:])
                patches.append(tokens / tokens.norm(dim=-1, keepdim=True))
        return (global_feature, *patches)

    # ------------------------------------------------------------------ prompts and alignment (SPEC §2-§5)
    def text_features(self) -> torch.Tensor:
        """`[2, E]`: normal, abnormal."""
        return encode_text(self.backbone, self.prompt_learner)

    @staticmethod
    def _probabilities(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Two-class softmax of the cosine similarities at temperature 0.07, in float32: `[N, L, 2]`."""
        with torch.autocast(features.device.type, enabled=False):
            return (features.float() @ text.float().t() / TEMPERATURE).softmax(dim=-1)

    def _grid_maps(self, per_patch: torch.Tensor) -> torch.Tensor:
        """`[N, L, C]` → `[N, C, S, S]`, bilinear (align_corners=False), as the reference's get_similarity_map."""
        n, length, channels = per_patch.shape
        side = round(length ** 0.5)
        grid = per_patch.transpose(1, 2).reshape(n, channels, side, side)
        return F.interpolate(grid, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False)

    def image_logits(self, global_feature: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with torch.autocast(global_feature.device.type, enabled=False):
            return global_feature.float() @ text.float().t() / TEMPERATURE

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over the map layers of `(P_abnormal + 1 - P_normal) / 2` at the input size, and the image's
        abnormal probability. The map is combined at patch resolution and upsampled once (bilinear
        upsampling is linear: the reference's per-layer upsampling, up to rounding)."""
        global_feature, *patches = self.extract_features(images)
        text = self.text_features()
        per_patch = 0
        for features in patches:
            p = self._probabilities(features, text)
            per_patch = per_patch + (p[..., 1:] + 1 - p[..., :1]) / 2
        maps = self._grid_maps(per_patch)[:, 0]
        scores = self.image_logits(global_feature, text).softmax(dim=-1)[:, 1]
        return maps, scores

    # ------------------------------------------------------------------ training (SPEC §6-§7)
    def training_losses(self, features, masks, labels) -> dict[str, torch.Tensor]:
        global_feature, *patches = features
        text = self.text_features()
        image_loss = F.cross_entropy(self.image_logits(global_feature, text), labels)
        maps = [self._grid_maps(self._probabilities(p, text)) for p in patches]
        local = LOCAL_LOSS_WEIGHT * pixel_loss(maps, masks.float())
        return {"loss": local + image_loss, "image_loss": image_loss, "pixel_loss": local}

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.prompt_learner]

    def make_optimizer(self, training) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(self.prompt_learner.parameters()), lr=training.learning_rate, betas=ADAM_BETAS)

    # ------------------------------------------------------------------ checkpoints (SPEC §9)
    @classmethod
    def recognizes(cls, checkpoint: dict) -> bool:
        learner = checkpoint.get(LEARNER_KEY)
        return (isinstance(learner, dict) and "Zero_try" not in checkpoint and "token_prefix_pos" in learner
                and getattr(learner.get("ctx_pos"), "dim", lambda: 0)() == 4)

    @classmethod
    def recorded_settings(cls, checkpoint: dict) -> dict:
        """The authors' files record nothing; n_ctx, depth and t_n_ctx show in their tensors."""
        if isinstance(checkpoint.get("settings"), dict):
            return dict(checkpoint["settings"])
        learner = checkpoint.get(LEARNER_KEY)
        try:
            deep = sorted(k for k in learner if k.startswith("compound_prompts_text."))
            recorded = {"n_ctx": int(learner["ctx_pos"].shape[2]), "depth": len(deep) + 1}
            if deep:
                recorded["t_n_ctx"] = int(learner[deep[0]].shape[0])
            return recorded
        except (KeyError, AttributeError, IndexError, TypeError) as error:
            raise CheckpointError(f"the checkpoint's {LEARNER_KEY} lacks {error}: not an AnomalyCLIP prompt "
                                  "learner") from None

    def load_checkpoint(self, checkpoint: dict, path) -> None:
        config = self.config
        context = (f"n_ctx={config.n_ctx}, depth={config.depth}, t_n_ctx={config.t_n_ctx} on a CLIP with text "
                   f"width {self.backbone.text_width}")
        check_state(self.prompt_learner, checkpoint[LEARNER_KEY], "prompt learner", path, context)
        self.prompt_learner.load_state_dict(checkpoint[LEARNER_KEY])

    def checkpoint_state(self) -> dict:
        return {LEARNER_KEY: self.prompt_learner.state_dict()}
