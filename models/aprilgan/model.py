"""APRIL-GAN: a frozen CLIP, one linear layer per tapped vision layer, a fixed prompt ensemble (SPEC_APRILGAN §1-§8).

Zero-shot: each tapped layer's patch tokens go through their linear layer into the joint
embedding space and are compared with the class's normal/abnormal text embeddings; the
per-layer abnormal probabilities (softmax after upsampling) are summed. Few-shot adds, per
memory layer, the cosine distance of each raw patch token to its nearest patch of the
class's normal reference images. The image score is CLIP's own zero-shot probability of
"abnormal" for the class token (few-shot: averaged with the map maxima, min-max normalised
over each class of the evaluated set).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prompt_ensemble import aprilgan_sentences, tokenize

from ..backbone import FrozenCLIP
from ..base import AnomalyModel, check_image_size
from ..checkpoint import PROJECT_KEYS, CheckpointError, check_state
from ..losses import dice_loss, focal_loss
from .config import LOGIT_SCALE

LINEAR_KEY = "trainable_linearlayer"  # the authors' checkpoint key
MEMORY_PREFIX = "fewshot_memory"


class LinearLayers(nn.Module):
    """One `nn.Linear(vision width -> embedding width)` per tapped layer, under the authors' key names (`fc.i`)."""

    def __init__(self, width: int, embed_dim: int, count: int):
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(count)])

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        return [fc(t) for fc, t in zip(self.fc, tokens)]


class AprilGAN(AnomalyModel):
    method = "aprilgan"
    # The reference builds CLIP from open_clip's ViT-L-14-336 config at 518 px, which has no quick_gelu: the
    # exact GELU (SPEC_APRILGAN §1); its positional embedding is resized by open_clip's resize_pos_embed.
    quick_gelu = False
    positional_interpolation = "bicubic-antialias"
    class_conditioned = True  # the prompts name the image's class: forward takes `cls_names`
    supports_few_shot = True

    def __init__(self, clip: torch.nn.Module, config):
        super().__init__(config)
        self.backbone = FrozenCLIP(clip, self.positional_interpolation)
        depth = self.backbone.num_vision_layers
        checked = [("features_list", config.features_list)]
        if config.mode == "few_shot":
            checked.append(("few_shot_features", config.few_shot_features))
        for name, layers in checked:
            bad = [layer for layer in layers if not 1 <= layer <= depth]
            if bad:
                raise ValueError(f"--{name} {bad} outside the vision tower's layers 1..{depth}")
        check_image_size(config.image_size, self.backbone.patch_size)
        self.linear = LinearLayers(self.backbone.vision_width, self.backbone.embed_dim, len(config.features_list))
        self._text_cache: dict[str, torch.Tensor] = {}  # `*_cache`: export.py empties it before tracing
        self.reference_classes: list[str] = []
        self.reference_paths: dict[str, list[str]] = {}

    # Not VCP-CLIP's min-max of maps and scores: the few-shot score fusion over a class (SPEC_APRILGAN §5) is
    # `finalize`'s, which test.py applies; a per-image run (predict.py, exported files) reports the zero-shot part.
    set_normalization = False

    def prepare_class(self, cls_name: str) -> None:
        self.class_text(cls_name)

    @property
    def few_shot(self) -> bool:
        return self.config.mode == "few_shot"

    # ------------------------------------------------------------------ text (SPEC_APRILGAN §2)
    @torch.no_grad()
    def class_text(self, cls_name: str) -> torch.Tensor:
        """`[E, 2]` (normal, abnormal) text embeddings of one class: each sentence encoded and normalised, the
        mean per state normalised again. Computed once per class and kept."""
        device = self.backbone.clip.text_projection.device
        cached = self._text_cache.get(cls_name)
        if cached is not None and cached.device == device:
            return cached
        states = []
        for sentences in aprilgan_sentences(cls_name):
            token_ids = tokenize(sentences).to(device)
            encoded = self.backbone.encode_prompts(self.backbone.embed_tokens(token_ids), token_ids)
            mean = encoded.mean(dim=0)
            states.append(mean / mean.norm())
        self._text_cache[cls_name] = torch.stack(states, dim=1)
        return self._text_cache[cls_name]

    def text_features(self, cls_names) -> torch.Tensor:
        """`[N, E, 2]` for a batch, by class name."""
        return torch.stack([self.class_text(name) for name in cls_names])

    def _text_for(self, names, count: int) -> torch.Tensor:
        if isinstance(names, str):
            return self.class_text(names).unsqueeze(0).expand(count, -1, -1)
        return self.text_features(names)

    # ------------------------------------------------------------------ the maps (SPEC_APRILGAN §3, §4)
    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The raw residual stream after each tapped block, patch tokens only, `[N, L, W]` each (frozen)."""
        _, taps = self.backbone.residual_streams(images, self.config.layers)
        return tuple(taps[layer][:, 1:] for layer in self.config.layers)

    def layer_logits(self, features, text: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, `LOGIT_SCALE *` cosine of the mapped patch tokens and the text, on the patch grid `[N, 2, h, h]`."""
        out = []
        for tokens in self.linear(list(features)):
            tokens = tokens / tokens.norm(dim=-1, keepdim=True)
            logits = LOGIT_SCALE * tokens @ text
            n, length, _ = logits.shape
            side = int(length ** 0.5)
            out.append(logits.permute(0, 2, 1).reshape(n, 2, side, side))
        return out

    def upsample(self, grid: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)

    def probability_maps(self, features, text) -> list[torch.Tensor]:
        """Per layer, `[N, 2, S, S]`: upsampled first, softmax over the two states after (as the reference)."""
        return [torch.softmax(self.upsample(logits), dim=1) for logits in self.layer_logits(features, text)]

    def few_shot_map(self, images_taps: dict[int, torch.Tensor], names) -> torch.Tensor:
        """Sum over the memory layers of the upsampled distance `1 - max cosine` to the class's memory, `[N, S, S]`."""
        total = None
        for j, layer in enumerate(self.config.memory_layers):
            patches = F.normalize(images_taps[layer][:, 1:].float(), dim=-1)  # [N, L, W]
            n = patches.shape[0]
            if isinstance(names, str):  # one class: one batched product
                distance = (1 - patches @ self.memory(names, j).t()).min(dim=-1).values
            else:
                distance = torch.stack([(1 - self.memory(name, j) @ patches[i].t()).min(dim=0).values
                                        for i, name in enumerate(names)])
            side = int(distance.shape[1] ** 0.5)
            upsampled = self.upsample(distance.reshape(n, 1, side, side))[:, 0]
            total = upsampled if total is None else total + upsampled
        return total

    def image_probability(self, final: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """CLIP's zero-shot probability of "abnormal": the class token through `ln_post` and `proj`."""
        image = self.backbone.project(final[:, 0])
        image = image / image.norm(dim=-1, keepdim=True)
        return (LOGIT_SCALE * torch.einsum("ne,nes->ns", image, text)).softmax(dim=-1)[:, 1]

    def predict(self, images: torch.Tensor, cls_names=None) -> tuple[torch.Tensor, torch.Tensor]:
        names = self.batch_classes(cls_names, images.shape[0])
        layers = set(self.config.layers) | (set(self.config.memory_layers) if self.few_shot else set())
        final, taps = self.backbone.residual_streams(images, sorted(layers))
        text = self._text_for(names, images.shape[0])
        features = tuple(taps[layer][:, 1:] for layer in self.config.layers)
        maps = sum(p[:, 1] for p in self.probability_maps(features, text))
        if self.few_shot:
            maps = maps + self.few_shot_map(taps, names)
        return maps, self.image_probability(final, text)

    def finalize(self, outputs: dict, cls_names) -> dict:
        """Few-shot: image score = (CLIP's probability + the map maximum min-max normalised over the class) / 2."""
        if not self.few_shot:
            return outputs
        maps, scores = outputs["anomaly_maps"], outputs["image_scores"]
        peaks = maps.flatten(1).max(dim=1).values
        fused = scores.clone()
        for name in dict.fromkeys(cls_names):
            index = torch.tensor([i for i, c in enumerate(cls_names) if c == name], device=scores.device)
            peak = peaks[index]
            fused[index] = 0.5 * (scores[index] + (peak - peak.min()) / (peak.max() - peak.min()))
        return {**outputs, "image_scores": fused, "image_scores_zero_shot": scores}

    # ------------------------------------------------------------------ few-shot memory (SPEC_APRILGAN §4)
    @torch.no_grad()
    def set_references(self, cls_name: str, images: torch.Tensor, paths=()) -> None:
        """Store the raw patch tokens of `images` (uint8 `[K, 3, S, S]`, normal references of `cls_name`) per
        memory layer, as buffers (they travel with the model and into exported files)."""
        from ..base import normalize_images

        if cls_name not in self.reference_classes:
            self.reference_classes.append(cls_name)
        index = self.reference_classes.index(cls_name)
        layers = self.config.memory_layers
        _, taps = self.backbone.residual_streams(normalize_images(images), layers)
        for j, layer in enumerate(layers):
            memory = F.normalize(taps[layer][:, 1:].reshape(-1, taps[layer].shape[-1]).float(), dim=-1)
            self.register_buffer(f"{MEMORY_PREFIX}_{index}_{j}", memory)
        self.reference_paths[cls_name] = [str(p) for p in paths]

    def memory(self, cls_name: str, layer_index: int) -> torch.Tensor:
        if cls_name not in self.reference_classes:
            raise ValueError(f"few-shot mode has no reference images for class {cls_name!r} "
                             f"(it has: {', '.join(self.reference_classes) or 'none'})")
        return getattr(self, f"{MEMORY_PREFIX}_{self.reference_classes.index(cls_name)}_{layer_index}")

    # ------------------------------------------------------------------ training (SPEC_APRILGAN §6)
    def training_losses(self, features, masks, labels, cls_names=None) -> dict[str, torch.Tensor]:
        names = self.batch_classes(cls_names, masks.shape[0])
        maps = self.probability_maps(features, self._text_for(names, masks.shape[0]))
        target = masks.float()
        total = 0
        losses = {}
        for j, probabilities in enumerate(maps):
            focal = focal_loss(probabilities.float(), target)
            dice = dice_loss(probabilities[:, 1].float(), target)
            total = total + focal + dice
            losses[f"focal_{j}"], losses[f"dice_{j}"] = focal, dice
        return {"loss": total, **losses}

    def trainable_modules(self) -> list[nn.Module]:
        return [self.linear]

    def make_optimizer(self, training) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.linear.parameters(), lr=training.learning_rate, betas=(0.5, 0.999))

    def validation_maps(self, images: torch.Tensor, cls_names=None) -> dict[str, torch.Tensor]:
        """The zero-shot map (normalised images in), for the optional per-epoch validation's pixel AP."""
        maps, _ = self.predict(images, cls_names)
        return {"ap": maps}

    # ------------------------------------------------------------------ checkpoints (SPEC_APRILGAN §8)
    @classmethod
    def recognizes(cls, checkpoint: dict) -> bool:
        """The authors' layout: `trainable_linearlayer` alone (VCP-CLIP's files carry it beside their own modules)."""
        tensors = {k for k in checkpoint if k not in PROJECT_KEYS}
        return tensors == {LINEAR_KEY} and isinstance(checkpoint.get(LINEAR_KEY), dict)

    @classmethod
    def recorded_settings(cls, checkpoint: dict) -> dict:
        """The authors' files record nothing; the number of linear layers is checked when loading."""
        if isinstance(checkpoint.get("settings"), dict):
            return dict(checkpoint["settings"])
        return {}

    def load_checkpoint(self, checkpoint: dict, path) -> None:
        state = checkpoint[LINEAR_KEY]
        context = (f"--features_list {' '.join(map(str, self.config.features_list))} (one linear layer per layer) on "
                   f"a CLIP of vision width {self.backbone.vision_width} and embedding width {self.backbone.embed_dim}")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: its {LINEAR_KEY} entry is not a state dict")
        check_state(self.linear, state, "linear layers", path, context)
        self.linear.load_state_dict(state)

    def checkpoint_state(self) -> dict:
        return {LINEAR_KEY: self.linear.state_dict()}
