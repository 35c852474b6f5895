"""AdaCLIP: a frozen CLIP with hybrid (static + dynamic) learnable prompts in both towers, linear heads on
four vision layers and the hybrid semantic fusion of the most abnormal patches into the image score,
wired as the reference (caoyunkang/AdaCLIP; SPEC_ADACLIP §1-§8)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbone import FrozenCLIP
from ..base import AnomalyModel, check_image_size
from ..checkpoint import PROJECT_KEYS, CheckpointError, check_state
from ..losses import dice_loss, focal_loss
from .config import ADAMW_BETAS, HSF_ALPHA, LOGIT_SCALE
from .fusion import hybrid_semantic_fusion
from .prompts import Learnable, block_context, class_tokens, text_features

PREFIX = "clip_model."  # the reference saves its trainer's state dict: the model sits under `clip_model`


class AdaCLIP(AnomalyModel):
    method = "adaclip"
    # The reference builds CLIP(**ViT-L-14-336.json) (no quick_gelu: the exact GELU) and resizes the positional
    # embedding with its copy of open_clip's resize_pos_embed: bicubic, no antialias.
    quick_gelu = False
    positional_interpolation = "bicubic"
    class_conditioned = True  # the prompts name the image's class

    def __init__(self, clip: torch.nn.Module, config):
        super().__init__(config)
        self.backbone = FrozenCLIP(clip, self.positional_interpolation)
        depth = self.backbone.num_vision_layers
        if depth < 4:
            raise ValueError(f"AdaCLIP reads the vision tower at its four quarter points; this tower has {depth} "
                             "blocks (at least 4 needed)")
        check_image_size(config.image_size, self.backbone.patch_size)
        if config.prompting_branch and config.prompting_depth > depth:
            raise ValueError(f"--prompting_depth {config.prompting_depth} exceeds the vision tower's {depth} blocks")
        self.learnable = Learnable(config, self.backbone.vision_width, self.backbone.text_width,
                                   self.backbone.embed_dim, len(self.output_layers))
        self._text_cache: dict[str, torch.Tensor] = {}  # `*_cache`: export.py empties it before tracing
        self.tokenized: dict = {}  # class name -> its sentences' tokens (prompts.class_tokens), kept
        self.global_batch_size = 1  # of the training run (configure_training): it decides the dice's grouping

    @property
    def output_layers(self) -> tuple[int, ...]:
        """The reference's feature hierarchy: 1-based blocks at the quarter points of the tower."""
        quarter = self.backbone.num_vision_layers // 4
        return tuple(quarter * i for i in range(1, 5))

    def prepare_class(self, cls_name: str) -> None:
        if cls_name not in self.tokenized:
            self.tokenized[cls_name] = class_tokens(cls_name)

    # ------------------------------------------------------------------ the vision tower (SPEC §2)
    def dynamic_prompts(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """From the unprompted tower's image embedding (`ln_post`, `proj`, frozen): `[N, length, W]` vision and
        `[N, length, D]` text prompts, one linear layer per prompt token."""
        if not self.config.dynamic:
            return None, None
        with torch.no_grad():
            final, _ = self.backbone.residual_streams(images, ())
            embedding = self.backbone.project(final[:, 0])
        heads = self.learnable
        visual = torch.stack([fc(embedding) for fc in heads.dynamic_visual_prompt_generator.head], dim=1)
        text = torch.stack([fc(embedding) for fc in heads.dynamic_text_prompt_generator.head], dim=1)
        return visual, text

    def prompted_vision(self, images: torch.Tensor, dynamic: torch.Tensor | None):
        """The vision tower with prompts appended after the tokens entering block 0 and replaced at blocks
        1..depth-1: the image embedding `[N, E]` (class token, `ln_post`, `proj`) and, per output layer, the
        stream's tokens without the prompts `[N, 1+L, W]`."""
        config = self.config
        prompted = config.visual_prompts
        static = getattr(self.learnable, "visual_prompter", None)
        visual = self.backbone.clip.visual
        with torch.set_grad_enabled(torch.is_grad_enabled() and prompted):
            x = visual.conv1(images)
            grid = x.shape[-1]
            x = x.flatten(2).transpose(1, 2)
            class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([class_token, x], dim=1) + self.backbone.positional_embedding(grid).to(x.dtype)
            x = visual.ln_pre(x)
            length = config.prompting_length if prompted else 0
            wanted, taps = set(self.output_layers), []
            for index, block in enumerate(visual.transformer.resblocks):
                if prompted and index < config.prompting_depth:
                    context = block_context(static, dynamic, index, x.shape[0]).to(x.dtype)
                    x = torch.cat([x if index == 0 else x[:, :-length], context], dim=1)
                x = block(x)
                if index + 1 in wanted:
                    taps.append(x[:, :x.shape[1] - length])
            embedding = self.backbone.project(x[:, 0])
        return embedding, taps

    # ------------------------------------------------------------------ alignment (SPEC §3-§6)
    def _features(self, images: torch.Tensor, cls_names):
        """Projected, normalised class token `[N, E]`, per layer patch tokens `[N, L, E]`, text `[N, E, 2]`."""
        names = self.batch_classes(cls_names, images.shape[0])
        dynamic_visual, dynamic_text = self.dynamic_prompts(images)
        embedding, taps = self.prompted_vision(images, dynamic_visual)
        text = text_features(self.backbone, self.learnable, self.config, names, images.shape[0], dynamic_text,
                             self._text_cache, self.tokenized)
        patches = []
        for fc, tokens in zip(self.learnable.patch_token_layer.head, taps):
            projected = fc(tokens[:, 1:])
            patches.append(projected / projected.norm(dim=-1, keepdim=True))
        cls_token = self.learnable.cls_token_layer.head[0](embedding)
        return cls_token / cls_token.norm(dim=-1, keepdim=True), patches, text

    def _similarities(self, images, cls_names):
        """Per layer the patch logits `[N, L, 2]`, and the image's two-class probabilities `[N, 2]`."""
        image_feature, patches, text = self._features(images, cls_names)
        with torch.autocast(images.device.type, enabled=False):
            text = text.float()
            logits = [LOGIT_SCALE * p.float() @ text for p in patches]
            if self.config.use_hsf:
                clustered = hybrid_semantic_fusion([p.float() for p in patches], logits, self.config.k_clusters)
                image_feature = F.normalize(HSF_ALPHA * clustered + (1 - HSF_ALPHA) * image_feature.float(), dim=1)
            score = (LOGIT_SCALE * image_feature.float().unsqueeze(1) @ text).squeeze(1).softmax(dim=1)
        return logits, score

    def _upsampled(self, logits: torch.Tensor) -> torch.Tensor:
        n, length, channels = logits.shape
        side = int(length ** 0.5)
        grid = logits.permute(0, 2, 1).reshape(n, channels, side, side)
        size = self.config.image_size
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)

    def predict(self, images: torch.Tensor, cls_names=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over layers of the upsampled logits, softmaxed: `(P_abnormal + 1 - P_normal) / 2`; the image's
        abnormal probability."""
        logits, score = self._similarities(images, cls_names)
        mean = torch.stack([self._upsampled(layer) for layer in logits], dim=1).mean(dim=1).softmax(dim=1)
        return (mean[:, 1] + 1 - mean[:, 0]) / 2, score[:, 1]

    # ------------------------------------------------------------------ training (SPEC §7)
    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The prompts enter the vision tower at its first block: nothing upstream is frozen but the images."""
        return (images,)

    def training_losses(self, features, masks, labels, cls_names=None) -> dict[str, torch.Tensor]:
        """Focal loss of the image probabilities, then per layer focal + dice(abnormal) + dice(normal) of the
        per-layer softmax maps. The reference squeezes the mask batch: with one image (the only batch size it
        runs) its dice is taken per pixel row. That follows the run's global batch, so that torchrun's shares of
        a larger batch (one image each) keep the per-image dice of one process."""
        (images,) = features
        logits, score = self._similarities(images, cls_names)
        target = masks.float()
        n = target.shape[0]
        image_loss = focal_loss(score.reshape(n, 2, 1, 1), labels.reshape(n, 1, 1))
        seg, terms = 0, {}
        groups = target.shape[-1] if self.global_batch_size == 1 else None
        for j, layer in enumerate(logits):
            maps = self._upsampled(layer.float()).softmax(dim=1)
            focal = focal_loss(maps, target)
            abnormal, normal = maps[:, 1], maps[:, 0]
            if groups:
                abnormal, normal = abnormal.reshape(-1, groups), normal.reshape(-1, groups)
            gt = target.reshape(abnormal.shape)
            dice_abnormal, dice_normal = dice_loss(abnormal, gt), dice_loss(normal, 1 - gt)
            seg = seg + (focal + dice_abnormal + dice_normal)
            terms.update({f"focal_{j}": focal, f"dice_abnormal_{j}": dice_abnormal, f"dice_normal_{j}": dice_normal})
        return {"loss": image_loss + seg, "image_loss": image_loss, **terms}

    def configure_training(self, training) -> None:
        self.global_batch_size = training.batch_size

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.learnable]

    def make_optimizer(self, training) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.learnable.parameters(), lr=training.learning_rate, betas=ADAMW_BETAS)

    def validation_maps(self, images: torch.Tensor, cls_names=None) -> dict[str, torch.Tensor]:
        maps, _ = self.predict(images, cls_names)
        return {"ap": maps}

    # ------------------------------------------------------------------ checkpoints (SPEC §8)
    @classmethod
    def recognizes(cls, checkpoint: dict) -> bool:
        keys = [k for k in checkpoint if k not in PROJECT_KEYS]
        return bool(keys) and all(isinstance(k, str) and k.startswith(PREFIX) for k in keys) and any(
            ".patch_token_layer." in f".{k}" for k in keys)

    @classmethod
    def recorded_settings(cls, checkpoint: dict) -> dict:
        """This project's files record every setting; the authors' tell what their tensors show: prompt length,
        depth and type, and the prompted towers when static prompts show them."""
        if isinstance(checkpoint.get("settings"), dict):
            return dict(checkpoint["settings"])
        keys = [k[len(PREFIX):] for k in checkpoint if isinstance(k, str) and k.startswith(PREFIX)]
        static = {tower: sorted(k for k in keys if k.startswith(f"{tower}.static_prompts.")) for tower in
                  ("visual_prompter", "text_prompter")}
        dynamic = [k for k in keys if k.startswith("dynamic_visual_prompt_generator.head.") and k.endswith(".weight")]
        recorded = {"prompting_type": ("S" if any(static.values()) else "") + ("D" if dynamic else "")}
        if any(static.values()):
            some = next(v for v in static.values() if v)
            recorded["prompting_depth"] = len(some)
            recorded["prompting_length"] = int(checkpoint[PREFIX + some[0]].shape[0])
            recorded["prompting_branch"] = ("V" if static["visual_prompter"] else "") + (
                "L" if static["text_prompter"] else "")
        elif dynamic:
            recorded["prompting_length"] = len(dynamic)
        return recorded

    def load_checkpoint(self, checkpoint: dict, path) -> None:
        state = {k[len(PREFIX):]: v for k, v in checkpoint.items() if isinstance(k, str) and k.startswith(PREFIX)}
        config = self.config
        context = (f"--prompting_depth {config.prompting_depth} --prompting_length {config.prompting_length} "
                   f"--prompting_type {config.prompting_type or repr('')} --prompting_branch "
                   f"{config.prompting_branch or repr('')} on a CLIP of vision width {self.backbone.vision_width}, "
                   f"text width {self.backbone.text_width}, {self.backbone.num_vision_layers} vision blocks")
        if not state:
            raise CheckpointError(f"{path} holds no '{PREFIX}' tensors: not an AdaCLIP checkpoint")
        check_state(self.learnable, state, "learnable prompts and heads", path, context)
        self.learnable.load_state_dict(state)

    def checkpoint_state(self) -> dict:
        return {PREFIX + k: v for k, v in self.learnable.state_dict().items()}
