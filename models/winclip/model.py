"""WinCLIP and WinCLIP+: a frozen CLIP, a compositional prompt ensemble, window embeddings (SPEC_WINCLIP §1-§7).

Zero-shot: the image embedding and the embedding of every window of each scale (the window's
patch tokens, positional embedding already added, behind the class token, through the whole
tower) are compared with the class's normal/anomalous text embeddings; each patch takes the
harmonic mean of the scores of the windows covering it, and the scales' maps and the image
score are combined by a harmonic mean. WinCLIP+ (`--k_shot` / `--reference_dir`) adds the
distance of each patch token and each window embedding to the nearest one of the class's
normal reference images, averaged over the scales, and fuses it with the zero-shot map.
Every window of a scale goes through the tower in one batch (one forward pass per scale).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from prompt_ensemble import tokenize, winclip_sentences

from ..backbone import FrozenCLIP
from ..base import AnomalyModel, check_image_size
from ..checkpoint import CheckpointError
from .config import GENERIC_CLASS_NAME

MEMORY_PREFIX = "fewshot_memory"
log = logging.getLogger("zsas.models")


def window_indices(grid: int, size: int) -> torch.Tensor:
    """`[M, size*size]` patch indices of every `size`x`size` window at stride 1, row-major windows and patches."""
    rows = torch.arange(grid - size + 1)
    starts = (rows[:, None] * grid + rows[None, :]).flatten()
    offsets = (torch.arange(size)[:, None] * grid + torch.arange(size)[None, :]).flatten()
    return starts[:, None] + offsets[None, :]


def harmonic_aggregation(scores: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Each patch's harmonic mean of the scores `[N, M]` of the windows covering it (`coverage` `[M, L]` bool) ->
    `[N, L]`; a patch no window covers gets 0."""
    inverse = torch.where(coverage, (1 / scores).unsqueeze(-1), 0).sum(dim=1)
    return (coverage.sum(dim=0) / inverse).nan_to_num(posinf=0.0)


def association(embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Half the cosine distance of each embedding `[N, P, D]` to its nearest row of `memory` `[R, D]` (normalised)."""
    return (1 - F.normalize(embeddings, dim=-1) @ memory.t()).min(dim=-1).values / 2


class WinCLIP(AnomalyModel):
    method = "winclip"
    # anomalib builds ViT-B-16-plus-240 from open_clip's config, which has no quick_gelu: the exact GELU.
    quick_gelu = False
    positional_interpolation = "bicubic-antialias"  # open_clip's own; anomalib never resizes (240 px tower at 240)
    class_conditioned = True
    supports_few_shot = True
    references_switch_few_shot = True  # --k_shot / --reference_dir alone turn WinCLIP+ on (anomalib's k_shot)
    generic_class_name = GENERIC_CLASS_NAME

    def __init__(self, clip: torch.nn.Module, config):
        super().__init__(config)
        self.backbone = FrozenCLIP(clip, self.positional_interpolation)
        check_image_size(config.image_size, self.backbone.patch_size)
        self.grid = self.backbone.grid_size(config.image_size)
        too_large = [s for s in config.scales if s > self.grid]
        if too_large:
            raise ValueError(f"--scales {too_large} larger than the {self.grid}x{self.grid} patch grid of "
                             f"--image_size {config.image_size}")
        for scale in config.scales:
            index = window_indices(self.grid, scale)
            coverage = torch.zeros(index.shape[0], self.grid * self.grid, dtype=torch.bool)
            coverage.scatter_(1, index, True)
            self.register_buffer(f"window_index_{scale}", index, persistent=False)
            self.register_buffer(f"window_coverage_{scale}", coverage, persistent=False)
        self._text_cache: dict[str, torch.Tensor] = {}  # `*_cache`: export.py empties it before tracing
        self.reference_classes: list[str] = []
        self.reference_paths: dict[str, list[str]] = {}
        self.few_shot_requested = False

    @property
    def few_shot(self) -> bool:
        return self.config.mode == "few_shot" or self.few_shot_requested or bool(self.reference_classes)

    def prepare_class(self, cls_name: str) -> None:
        self.class_text(cls_name)

    # ------------------------------------------------------------------ text (SPEC_WINCLIP §2)
    @torch.no_grad()
    def class_text(self, cls_name: str) -> torch.Tensor:
        """`[2, E]` (normal, anomalous): the mean of the raw (unnormalised) embeddings of each state's sentences."""
        device = self.backbone.clip.text_projection.device
        cached = self._text_cache.get(cls_name)
        if cached is not None and cached.device == device:
            return cached
        states = []
        for sentences in winclip_sentences(cls_name):
            token_ids = tokenize(sentences).to(device)
            encoded = self.backbone.encode_prompts(self.backbone.embed_tokens(token_ids), token_ids, normalize=False)
            states.append(encoded.mean(dim=0))
        self._text_cache[cls_name] = torch.stack(states)
        return self._text_cache[cls_name]

    def unnamed_class(self) -> str:
        return self._generic("an image without a class name")

    def class_of_unbound_run(self) -> str:
        self.bind_class(self._generic("no class name given"))
        return self.bound_class

    def _generic(self, why: str) -> str:
        log.info("WinCLIP prompts name the object class; %s: the generic %r is used", why, self.generic_class_name)
        return self.generic_class_name

    # ------------------------------------------------------------------ image side (SPEC_WINCLIP §3)
    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings behind the class token, positional embedding added: `[N, 1+L, W]` (before `ln_pre`)."""
        visual = self.backbone.clip.visual
        x = visual.conv1(images)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([class_token, x], dim=1) + self.backbone.positional_embedding(grid).to(x.dtype)

    def _tower(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.backbone.clip.visual
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks:
            x = block(x)
        return visual.ln_post(x)

    def window_embeddings(self, tokens: torch.Tensor, scale: int) -> torch.Tensor:
        """`[N, M, E]`: every window of `scale` of every image through the tower as one batch of sequences."""
        n, _, width = tokens.shape
        index = getattr(self, f"window_index_{scale}")
        windows = tokens[:, 1:][:, index]  # [N, M, k, W]
        count = index.shape[0]
        class_token = tokens[:, :1].unsqueeze(1).expand(n, count, 1, width)
        sequences = torch.cat([class_token, windows], dim=2).reshape(n * count, 1 + index.shape[1], width)
        return (self._tower(sequences)[:, 0] @ self.backbone.clip.visual.proj).reshape(n, count, -1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor):
        """(image embeddings `[N, E]`, window embeddings per scale `[N, M, E]`, patch tokens `[N, L, W]` after
        `ln_post`, unprojected)."""
        tokens = self._tokens(images)
        final = self._tower(tokens)
        image = final[:, 0] @ self.backbone.clip.visual.proj
        return image, [self.window_embeddings(tokens, s) for s in self.config.scales], final[:, 1:]

    # ------------------------------------------------------------------ scores (SPEC_WINCLIP §4, §5)
    def anomalous_probability(self, embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).t()
        return (cosine / self.config.temperature).softmax(dim=-1)[..., 1]

    def coverage(self, scale: int) -> torch.Tensor:
        return getattr(self, f"window_coverage_{scale}")

    def zero_shot_map(self, image_score: torch.Tensor, windows, text: torch.Tensor) -> torch.Tensor:
        """`[N, L]`: harmonic mean over the image score and each scale's harmonically aggregated window scores."""
        maps = [image_score[:, None].expand(-1, self.grid * self.grid)]
        for scale, embeddings in zip(self.config.scales, windows):
            maps.append(harmonic_aggregation(self.anomalous_probability(embeddings, text), self.coverage(scale)))
        return len(maps) / (1 / torch.stack(maps)).sum(dim=0)

    def few_shot_map(self, windows, patches: torch.Tensor, cls_name: str) -> torch.Tensor:
        """`[N, L]`: mean over the patch tokens' and each scale's aggregated windows' association to the memory."""
        maps = [association(patches, self.memory(cls_name, "patch"))]
        for j, (scale, embeddings) in enumerate(zip(self.config.scales, windows)):
            maps.append(harmonic_aggregation(association(embeddings, self.memory(cls_name, j)), self.coverage(scale)))
        return torch.stack(maps).mean(dim=0)

    def predict(self, images: torch.Tensor, cls_names=None) -> tuple[torch.Tensor, torch.Tensor]:
        names = self.batch_classes(cls_names, images.shape[0])
        image, windows, patches = self.encode(images)
        if isinstance(names, str):
            maps, scores = self.grid_scores(image, windows, patches, names)
        else:
            maps = image.new_empty(images.shape[0], self.grid * self.grid)
            scores = image.new_empty(images.shape[0])
            for name in dict.fromkeys(names):  # one pass per class of the batch (its text, its memory)
                pick = torch.tensor([i for i, n in enumerate(names) if n == name], device=images.device)
                maps[pick], scores[pick] = self.grid_scores(image[pick], [w[pick] for w in windows], patches[pick],
                                                            name)
        side = self.config.image_size
        maps = F.interpolate(maps.reshape(-1, 1, self.grid, self.grid), size=(side, side), mode="bilinear")
        return maps[:, 0], scores

    def grid_scores(self, image, windows, patches, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of one class: (map on the patch grid `[N, L]`, image score `[N]`), WinCLIP+ fused when on."""
        text = self.class_text(name)
        score = self.anomalous_probability(image, text)
        grid_map = self.zero_shot_map(score, windows, text)
        if self.few_shot:
            few = self.few_shot_map(windows, patches, name)
            grid_map = (grid_map + few) / 2
            score = (score + few.amax(dim=-1)) / 2
        return grid_map, score

    # ------------------------------------------------------------------ WinCLIP+ memory (SPEC_WINCLIP §5)
    @torch.no_grad()
    def set_references(self, cls_name: str, images: torch.Tensor, paths=()) -> None:
        """Keep the normalised patch tokens and window embeddings of `images` (uint8 `[K, 3, S, S]`, normal
        references of `cls_name`) as buffers: they travel with the model and into exported files."""
        from ..base import normalize_images

        if cls_name not in self.reference_classes:
            self.reference_classes.append(cls_name)
        index = self.reference_classes.index(cls_name)
        _, windows, patches = self.encode(normalize_images(images))
        entries = {"patch": patches} | {str(j): w for j, w in enumerate(windows)}
        for key, value in entries.items():
            memory = F.normalize(value.reshape(-1, value.shape[-1]).float(), dim=-1)
            self.register_buffer(f"{MEMORY_PREFIX}_{index}_{key}", memory)
        self.reference_paths[cls_name] = [str(p) for p in paths]

    def memory(self, cls_name: str, key) -> torch.Tensor:
        if cls_name not in self.reference_classes:
            raise ValueError(f"WinCLIP+ has no reference images for class {cls_name!r} "
                             f"(it has: {', '.join(self.reference_classes) or 'none'})")
        return getattr(self, f"{MEMORY_PREFIX}_{self.reference_classes.index(cls_name)}_{key}")

    # ------------------------------------------------------------------ no training, no checkpoint
    @classmethod
    def recognizes(cls, checkpoint: dict) -> bool:
        return False

    @classmethod
    def recorded_settings(cls, checkpoint: dict) -> dict:
        return dict(checkpoint["settings"]) if isinstance(checkpoint.get("settings"), dict) else {}

    def load_checkpoint(self, checkpoint: dict, path) -> None:
        raise CheckpointError(f"{path}: WinCLIP is training-free and reads no checkpoint; drop the checkpoint flag")

    def checkpoint_state(self) -> dict:
        return {}
